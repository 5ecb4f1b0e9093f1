"""The leakage report: leads nobody is working, listed with how long and why.

- **no owner, no cadence**: nurturing (or recycled) leads with no owner and no active
  enrolment: why (suppressed, a cadence that ended and how, or no cadence's entry holds);
- **stuck**: leads longer in a status than ``max_in_status`` in ``rules/recycle.yaml``
  allows;
- **dead claim**: leads held by a hop run that stopped renewing its claim (it died):
  ``leadflow claims --release`` frees them.

Counts are exact; the rows listed are the oldest ``limit`` per kind.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, and_, exists, func, or_, select

from leadflow import queue, store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.recycle.rules import RecycleRules

KINDS = ("no_owner_no_cadence", "stuck", "dead_claim")


def _hours(now: datetime, since: pd.Series) -> pd.Series:
    return ((pd.Timestamp(now) - pd.to_datetime(since, utc=True)).dt.total_seconds() / 3600).round(
        1
    )


def find_leaks(
    conn: Connection, rules: RecycleRules, now: datetime, limit: int = 200
) -> dict[str, Any]:
    leads, e = t.leads, t.cadence_enrolments
    rows: list[pd.DataFrame] = []
    counts: dict[str, int] = {}
    # 1. no owner, no cadence
    events = t.engagement_events
    opted_out = exists().where(
        events.c.lead_id == leads.c.id, events.c.event_type.in_(("unsubscribe", "bounce"))
    )
    unworked = and_(
        leads.c.status.in_((Status.NURTURING.value, Status.RECYCLED.value)),
        leads.c.owner_rep_id.is_(None),
        ~exists().where(e.c.lead_id == leads.c.id, e.c.status == "active"),
    )
    # Unsubscribed or bounced: never contacted on purpose, counted apart, not leakage.
    counts_apart = {
        "suppressed": int(
            conn.execute(
                select(func.count()).select_from(leads).where(unworked, opted_out)
            ).scalar_one()
        )
    }
    idle = and_(unworked, ~opted_out)
    counts["no_owner_no_cadence"] = int(
        conn.execute(select(func.count()).select_from(leads).where(idle)).scalar_one()
    )
    if counts["no_owner_no_cadence"]:
        last = (
            select(e.c.lead_id, func.max(e.c.id).label("last_id")).group_by(e.c.lead_id).subquery()
        )
        ended = e.alias("ended")
        found = store.read_frame(
            conn,
            select(
                leads.c.id.label("lead_id"),
                leads.c.status,
                leads.c.status_changed_at.label("since"),
                ended.c.cadence,
                ended.c.end_reason,
            )
            .select_from(leads)
            .outerjoin(last, last.c.lead_id == leads.c.id)
            .outerjoin(ended, ended.c.id == last.c.last_id)
            .where(idle)
            .order_by(leads.c.status_changed_at)
            .limit(limit),
        )
        found["kind"] = "no_owner_no_cadence"
        found["why"] = [
            f"last cadence {c} ended: {r}"
            if isinstance(c, str)
            else "no cadence's entry criteria hold"
            for c, r in zip(found["cadence"], found["end_reason"], strict=True)
        ]
        rows.append(found.drop(columns=["cadence", "end_reason"]))
    # 2. stuck longer than the status allows
    limits = {status: rules.delay(amount) for status, amount in rules.max_in_status.items()}
    if limits:
        late = or_(
            *[
                and_(leads.c.status == status, leads.c.status_changed_at < now - allowed)
                for status, allowed in limits.items()
            ]
        )
        counts["stuck"] = int(
            conn.execute(select(func.count()).select_from(leads).where(late)).scalar_one()
        )
        found = store.read_frame(
            conn,
            select(
                leads.c.id.label("lead_id"),
                leads.c.status,
                leads.c.status_changed_at.label("since"),
            )
            .where(late)
            .order_by(leads.c.status_changed_at)
            .limit(limit),
        )
        found["kind"] = "stuck"
        found["why"] = [
            f"in {s} longer than the {rules.max_in_status[s]} allowed" for s in found["status"]
        ]
        rows.append(found)
    else:
        counts["stuck"] = 0
    # 3. claimed by a run that died
    dead = queue._dead_claims(now)
    counts["dead_claim"] = int(
        conn.execute(select(func.count()).select_from(leads).where(dead)).scalar_one()
    )
    if counts["dead_claim"]:
        claims = t.claims.alias("held_by")  # not the table the dead-claim test correlates
        found = store.read_frame(
            conn,
            select(
                leads.c.id.label("lead_id"),
                leads.c.status,
                func.coalesce(claims.c.renewed_at, leads.c.updated_at).label("since"),
                leads.c.claimed_by,
                claims.c.holder,
            )
            .select_from(leads)
            .outerjoin(claims, claims.c.token == leads.c.claimed_by)
            .where(dead)
            .limit(limit),
        )
        found["kind"] = "dead_claim"
        found["why"] = [
            f"claimed by {str(token).split(':')[0]} run"
            + (f" on {holder}" if isinstance(holder, str) else "")
            + " that stopped renewing its claim (leadflow claims --release)"
            for token, holder in zip(found["claimed_by"], found["holder"], strict=True)
        ]
        rows.append(found.drop(columns=["claimed_by", "holder"]))
    listed = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["lead_id", "status", "since", "kind", "why"])
    )
    if len(listed):
        listed["hours"] = _hours(now, listed["since"])
        listed["since"] = pd.to_datetime(listed["since"], utc=True).dt.strftime("%Y-%m-%d %H:%M")
    return {
        "as_of": pd.Timestamp(now).isoformat(),
        "counts": counts,
        "total": sum(counts.values()),
        "not_leakage": counts_apart,
        "leads": listed[["kind", "lead_id", "status", "since", "hours", "why"]].to_dict("records")
        if len(listed)
        else [],
    }


def markdown(leaks: dict[str, Any]) -> str:
    counts = leaks["counts"]
    lines = [
        f"## Leakage as of {leaks['as_of']}",
        f"{counts.get('no_owner_no_cadence', 0)} leads with no owner and no cadence, "
        f"{counts.get('stuck', 0)} stuck longer than their status allows, "
        f"{counts.get('dead_claim', 0)} held by a run that died. "
        f"({leaks.get('not_leakage', {}).get('suppressed', 0)} unsubscribed or bounced leads "
        "are left alone on purpose.)",
    ]
    if leaks["leads"]:
        lines += ["", "| kind | lead | status | since | hours | why |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {r['kind']} | {r['lead_id']} | {r['status']} | {r['since']} | {r['hours']} | {r['why']} |"
            for r in leaks["leads"][:100]
        ]
    return "\n".join(lines)
