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
from typing import Any, NamedTuple

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


class Found(NamedTuple):
    """One kind of leak: how many leads, and the oldest of them (None when none are read)."""

    kind: str
    count: int
    rows: pd.DataFrame | None  # lead_id, status, since, kind, why


def find_leaks(
    conn: Connection, rules: RecycleRules, now: datetime, limit: int = 200
) -> dict[str, Any]:
    """The leads nobody is working, per kind (``KINDS``), with the unsubscribed and bounced
    ones counted apart: the ``counts`` are exact, the ``leads`` listed the oldest ``limit`` per
    kind."""
    unworked = _unworked()
    # Unsubscribed or bounced: never contacted on purpose, counted apart, not leakage.
    not_leakage = {"suppressed": _count(conn, and_(unworked, _opted_out()))}
    found = [
        _no_owner_no_cadence(conn, and_(unworked, ~_opted_out()), limit),
        _stuck(conn, rules, now, limit),
        _dead_claimed(conn, now, limit),
    ]
    counts = {f.kind: f.count for f in found}
    listed = listing([f.rows for f in found if f.rows is not None], now)
    return {
        "as_of": pd.Timestamp(now).isoformat(),
        "counts": counts,
        "total": sum(counts.values()),
        "not_leakage": not_leakage,
        "leads": listed[["kind", "lead_id", "status", "since", "hours", "why"]].to_dict("records")
        if len(listed)
        else [],
    }


def _unworked() -> Any:
    """Nurturing or recycled, no owner, and no active cadence enrolment."""
    leads, e = t.leads, t.cadence_enrolments
    return and_(
        leads.c.status.in_((Status.NURTURING.value, Status.RECYCLED.value)),
        leads.c.owner_rep_id.is_(None),
        ~exists().where(e.c.lead_id == leads.c.id, e.c.status == "active"),
    )


def _opted_out() -> Any:
    """The lead unsubscribed or bounced."""
    leads, events = t.leads, t.engagement_events
    return exists().where(
        events.c.lead_id == leads.c.id, events.c.event_type.in_(("unsubscribe", "bounce"))
    )


def _count(conn: Connection, condition: Any) -> int:
    """How many leads meet the condition."""
    return int(
        conn.execute(select(func.count()).select_from(t.leads).where(condition)).scalar_one()
    )


def _no_owner_no_cadence(conn: Connection, idle: Any, limit: int) -> Found:
    """Leads nobody owns and no cadence works, each with its last enrolment (if any): the
    cadence that ended, and how."""
    kind = "no_owner_no_cadence"
    count = _count(conn, idle)
    if not count:
        return Found(kind, count, None)
    leads, e = t.leads, t.cadence_enrolments
    last = select(e.c.lead_id, func.max(e.c.id).label("last_id")).group_by(e.c.lead_id).subquery()
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
    found["kind"] = kind
    found["why"] = why_unworked(found["cadence"], found["end_reason"])
    return Found(kind, count, found.drop(columns=["cadence", "end_reason"]))


def why_unworked(cadences: pd.Series, end_reasons: pd.Series) -> list[str]:
    """Why an unowned lead is in no cadence: its last one ended, or none would take it.

    ``["welcome", None]`` and ``["completed", None]`` give
    ``["last cadence welcome ended: completed", "no cadence's entry criteria hold"]``.
    """
    return [
        f"last cadence {c} ended: {r}" if isinstance(c, str) else "no cadence's entry criteria hold"
        for c, r in zip(cadences, end_reasons, strict=True)
    ]


def _stuck(conn: Connection, rules: RecycleRules, now: datetime, limit: int) -> Found:
    """Leads longer in their status than ``max_in_status`` allows (none when it is empty)."""
    kind = "stuck"
    limits = {status: rules.delay(amount) for status, amount in rules.max_in_status.items()}
    if not limits:
        return Found(kind, 0, None)
    leads = t.leads
    late = or_(
        *[
            and_(leads.c.status == status, leads.c.status_changed_at < now - allowed)
            for status, allowed in limits.items()
        ]
    )
    count = _count(conn, late)
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
    found["kind"] = kind
    found["why"] = [
        f"in {s} longer than the {rules.max_in_status[s]} allowed" for s in found["status"]
    ]
    return Found(kind, count, found)


def _dead_claimed(conn: Connection, now: datetime, limit: int) -> Found:
    """Leads claimed by a hop run that stopped renewing its claim, with the claim's holder."""
    kind = "dead_claim"
    dead = queue._dead_claims(now)
    count = _count(conn, dead)
    if not count:
        return Found(kind, count, None)
    leads = t.leads
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
    found["kind"] = kind
    found["why"] = why_dead_claim(found["claimed_by"], found["holder"])
    return Found(kind, count, found.drop(columns=["claimed_by", "holder"]))


def why_dead_claim(tokens: pd.Series, holders: pd.Series) -> list[str]:
    """Which hop's run held the claim (the token's prefix), and on which host if known.

    ``"enrich:3f2a"`` held on ``"worker-1"`` gives ``"claimed by enrich run on worker-1 that
    stopped renewing its claim (leadflow claims --release)"``.
    """
    return [
        f"claimed by {str(token).split(':')[0]} run"
        + (f" on {holder}" if isinstance(holder, str) else "")
        + " that stopped renewing its claim (leadflow claims --release)"
        for token, holder in zip(tokens, holders, strict=True)
    ]


def listing(found: list[pd.DataFrame], now: datetime) -> pd.DataFrame:
    """The kinds' rows in one frame, ``since`` as ``YYYY-MM-DD HH:MM`` (UTC) and ``hours``
    since then at ``now``, to one decimal.

    A lead stuck since 09:00 listed at 14:30 the same day reads ``since`` ``... 09:00``,
    ``hours`` 5.5. No rows: an empty frame with the columns (and no ``hours``).
    """
    listed = (
        pd.concat(found, ignore_index=True)
        if found
        else pd.DataFrame(columns=["lead_id", "status", "since", "kind", "why"])
    )
    if len(listed):
        listed["hours"] = _hours(now, listed["since"])
        listed["since"] = pd.to_datetime(listed["since"], utc=True).dt.strftime("%Y-%m-%d %H:%M")
    return listed


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
