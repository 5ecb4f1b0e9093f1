"""Routing's I/O at the edges: reps into the database, the round robin's state and reps' load
out of it, and assignment rows back in. The routing decision itself is pure
(``leadflow/routing/decide.py``); the routing hop calls these around it, in the claim's transaction,
with the ``SERIAL`` claim strategy so two routers take turns on the shared state.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, delete, func, select, update

from leadflow import store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.routing.rules import Rep, RoutingRules

STATE_COLUMNS = ("pool", "rep", "served", "available", "open_leads", "new_today")
# A lead counts against its owner's capacity until it is closed or recycled.
OPEN_STATUSES = (Status.ROUTED.value, Status.ACCEPTED.value, Status.QUALIFIED.value)


def _rep_row(rep: Rep) -> dict[str, Any]:
    return {
        "code": rep.id,
        "email": rep.email.lower(),
        "name": rep.name,
        "manager": rep.manager,
        "pools": list(rep.pools),
        "territories": list(rep.territories) or None,
        "countries": [c for c in rep.territories if "-" not in c] or None,
        "industries": list(rep.industries) or None,
        "segments": list(rep.segments) or None,
        "weight": rep.weight,
        "max_open": rep.capacity.max_open,
        "max_new_per_day": rep.capacity.max_new_per_day,
        "capacity": rep.capacity.max_open if rep.capacity.max_open is not None else 50,
        "active": rep.active,
        "timezone": rep.timezone,
        "working_hours": rep.working_hours,
        "out_of_office": [w.model_dump(mode="json") for w in rep.out_of_office] or None,
        "country": rep.country,
    }


def sync_reps(conn: Connection, rules: RoutingRules, now: datetime) -> dict[str, int]:
    """Upsert the rules' reps into ``reps`` (matched by code, else by email, so reps loaded
    from a reference CSV get their code); returns rep code -> ``reps.id``. Reps the rules no
    longer list keep their row and their leads, but are in no pool any more (a booking never
    hands them a lead from the pool)."""
    table = t.reps
    existing = conn.execute(select(table.c.id, table.c.code, table.c.email)).all()
    by_code = {row.code: row.id for row in existing if row.code}
    by_email = {row.email.lower(): row.id for row in existing}
    ids: dict[str, int] = {}
    for rep in rules.reps:
        row = _rep_row(rep)
        rep_id = by_code.get(rep.id) or by_email.get(row["email"])
        if rep_id is None:
            rep_id = conn.execute(
                table.insert().values(**row, created_at=now).returning(table.c.id)
            ).scalar_one()
        else:
            conn.execute(update(table).where(table.c.id == rep_id).values(**row))
        ids[rep.id] = int(rep_id)
    gone = [row.id for row in existing if row.code and row.code not in ids]
    if gone:
        conn.execute(update(table).where(table.c.id.in_(gone)).values(pools=[]))
    return ids


def _day_start(rep: Rep, now: datetime) -> datetime:
    """Midnight of ``now``'s day in the rep's time zone, as UTC: "new today" is their today."""
    local = now.astimezone(rep.zone)
    return datetime.combine(local.date(), time(), tzinfo=rep.zone).astimezone(UTC)


def read_state(
    conn: Connection, rules: RoutingRules, rep_ids: dict[str, int], now: datetime
) -> pd.DataFrame:
    """``route_leads``'s ``reps_state``: the saved counters per (pool, rep) plus each rep's
    load now: open leads (owned, in ``OPEN_STATUSES``) and leads assigned since their local
    midnight."""
    saved = pd.DataFrame(
        conn.execute(
            select(
                t.routing_state.c.pool,
                t.routing_state.c.rep,
                t.routing_state.c.served,
                t.routing_state.c.available,
            )
        ).all(),
        columns=["pool", "rep", "served", "available"],
    )
    code_of = {v: k for k, v in rep_ids.items()}
    open_rows = conn.execute(
        select(t.leads.c.owner_rep_id, func.count())
        .where(
            t.leads.c.owner_rep_id.in_(list(rep_ids.values())), t.leads.c.status.in_(OPEN_STATUSES)
        )
        .group_by(t.leads.c.owner_rep_id)
    ).all()
    open_leads = {code_of[rep_id]: int(n) for rep_id, n in open_rows}
    # Counted in the database, one query per distinct local midnight (a handful of zones):
    # a busy day's assignments never cross the wire.
    by_start: dict[datetime, list[str]] = {}
    for rep in rules.reps:
        by_start.setdefault(_day_start(rep, now), []).append(rep.id)
    new_today = {rep.id: 0 for rep in rules.reps}
    a = t.assignments
    for start, codes in by_start.items():
        for code, n in conn.execute(
            select(a.c.rep_code, func.count())
            .where(a.c.rep_code.in_(codes), a.c.assigned_at >= start)
            .group_by(a.c.rep_code)
        ):
            new_today[code] = int(n)
    rows = []
    for pool in rules.pools:
        for rep in rules.pool_reps(pool.name):
            hit = saved[(saved["pool"] == pool.name) & (saved["rep"] == rep.id)]
            rows.append(
                {
                    "pool": pool.name,
                    "rep": rep.id,
                    "served": float(hit["served"].iloc[0]) if len(hit) else 0.0,
                    "available": bool(hit["available"].iloc[0]) if len(hit) else False,
                    "open_leads": open_leads.get(rep.id, 0),
                    "new_today": new_today[rep.id],
                }
            )
    return pd.DataFrame(rows, columns=list(STATE_COLUMNS))


def write_state(conn: Connection, state: pd.DataFrame, now: datetime) -> None:
    """Replace the saved counters with ``state`` (rows of reps no longer in a pool go)."""
    conn.execute(delete(t.routing_state))
    frame = state[["pool", "rep", "served", "available"]].copy()
    frame["available"] = frame["available"].astype(bool)
    frame["updated_at"] = pd.Timestamp(now)
    store.bulk_insert(conn, t.routing_state, frame)


def assignment_rows(
    assignments: pd.DataFrame, rep_ids: dict[str, int], now: datetime, flow_run_id: str | None
) -> pd.DataFrame:
    """Rows for the ``assignments`` table from ``route_leads``'s assignments (waiting leads
    excluded)."""
    routed = assignments[assignments["owner"].notna()]
    return pd.DataFrame(
        {
            "lead_id": routed["id"].to_numpy(),
            "rep_id": routed["owner"].map(rep_ids).to_numpy(),
            "rep_code": routed["owner"].to_numpy(),
            "step": routed["step"].to_numpy(),
            "pool": routed["pool"].to_numpy(),
            "rule": routed["rule"].to_numpy(),
            "version": routed["version"].to_numpy(),
            "reason": routed["reason"].to_numpy(),
            "candidates": routed["candidates"].to_numpy(),  # JSON text already
            "assigned_at": pd.Timestamp(now),
            "flow_run_id": flow_run_id,
        }
    )


def reps_to_avoid(
    conn: Connection, lead_ids: list[int], now: datetime | None = None
) -> dict[int, list[str]]:
    """Per lead, the reps who gave it back (rejected it) or lost it to an SLA escalation:
    routing does not hand it to them again, for good or, once recycling set a cool-down
    (``avoid_until``), until ``now`` passes it."""
    if not lead_ids:
        return {}
    table = t.assignments
    gave_back = table.c.released_reason.like("rejected%") | table.c.released_reason.like("sla%")
    if now is not None:
        gave_back = gave_back & (table.c.avoid_until.is_(None) | (table.c.avoid_until > now))
    found = store.read_frame_by_ids(
        conn,
        [table.c.lead_id, table.c.rep_code],
        table.c.lead_id,
        lead_ids,
        where=gave_back,
    )
    return {int(lead): sorted(set(codes)) for lead, codes in found.groupby("lead_id")["rep_code"]}


def account_owner_codes(leads: pd.DataFrame, rep_ids: dict[str, int]) -> pd.Series:
    """``route_leads``'s ``account_owner`` (rep code) from ``leads.account_owner_rep_id``."""
    code_of = {v: k for k, v in rep_ids.items()}
    if "account_owner_rep_id" not in leads.columns:
        return pd.Series([None] * len(leads), index=leads.index, dtype=object)
    return leads["account_owner_rep_id"].map(lambda v: None if pd.isna(v) else code_of.get(int(v)))


def proposed_slots(
    conn: Connection, rules: RoutingRules, now: datetime, lookback: timedelta = timedelta(days=14)
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Meeting slots already proposed to leads (owner notifications of the last ``lookback``
    that end after ``now``), per rep id: ``owner_messages``'s ``busy``, so two hot leads routed
    in different runs are never offered the same slot."""
    table = t.outbox
    rows = conn.execute(
        select(table.c.payload).where(
            table.c.kind == "owner_notification",
            table.c.attachments.is_not(None),
            table.c.created_at >= now - lookback,
        )
    ).all()
    known = {rep.id for rep in rules.reps}
    busy: dict[str, list[tuple[datetime, datetime]]] = {}
    for (payload,) in rows:
        payload = json.loads(payload) if isinstance(payload, str) else payload or {}
        owner = payload.get("owner")
        if owner not in known:
            continue
        for start, end in payload.get("slots") or []:
            interval = (datetime.fromisoformat(start), datetime.fromisoformat(end))
            if interval[1] > now:
                busy.setdefault(owner, []).append(interval)
    return busy
