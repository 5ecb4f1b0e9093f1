"""The SLA check's SQL: what its steps read and write around the pure decisions
(``leadflow/sla/decide.py``), in the check's transaction.

- start: ``assignments_to_start`` (the assignments and acceptances whose clocks start),
  ``mark_stage``, ``insert_timers``;
- meet: the activities watermark (``watermark``, ``newest_activity``, ``save_watermark``),
  ``first_activities`` (per timer, the earliest new activity that meets it, ranked in the
  database) and ``write_met``;
- escalate: the open timers to warn (``timers_to_warn``), past due (``timers_past_due``) or
  past their escalation instant (``timers_to_escalate``), ``mark_warned``, ``raise_level``,
  ``rep_emails`` and ``close_timers`` (of assignments routing released).

Every timer read for a decision is re-read under the check's lock and filtered to the leads
it holds (``held``: see ``leadflow.sla.check.hold_leads``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, and_, func, literal, or_, select, tuple_, update

from leadflow import store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.sla.decide import within
from leadflow.sla.rules import SlaRules

# Statuses in which a rep works the lead: the only ones a timer runs, warns and escalates in.
OWNED = (Status.ROUTED.value, Status.ACCEPTED.value, Status.QUALIFIED.value)
ACCEPTED = (Status.ACCEPTED.value, Status.QUALIFIED.value)
WATERMARK = "sla:activities"  # source_cursors row: the newest activity a check has seen


# --------------------------------------------------------------------------- start


def policy_fields(rules: SlaRules) -> list[Any]:
    """The ``leads`` columns the policies' ``when`` conditions read."""
    fields: set[str] = set()
    for policy in rules.policies:
        if policy.when is not None:
            fields |= policy.when.fields()
    columns = (t.lead_column(name) for name in sorted(fields))
    return [column for column in columns if column is not None]


def assignments_to_start(
    conn: Connection, rules: SlaRules, held: frozenset[int] | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The current assignments of held, owned leads whose clocks start: ``fresh`` (no stage
    yet: ``start: assigned`` policies) and ``accepted`` (stage ``assigned``, the lead
    accepted since, with ``accepted_at``: its first ``accept`` activity after the
    assignment). Both are read before either is marked. Columns: ``assignment_id``,
    ``lead_id``, ``rep_id``, ``assigned_at``, ``status``, ``status_changed_at`` and what the
    policies' conditions read."""
    assignments, leads, activities = t.assignments, t.leads, t.activities
    base = [
        assignments.c.id.label("assignment_id"),
        assignments.c.lead_id,
        assignments.c.rep_id,
        assignments.c.assigned_at,
        leads.c.status,
        leads.c.status_changed_at,
        *policy_fields(rules),
    ]
    joined = assignments.join(
        leads,
        and_(leads.c.id == assignments.c.lead_id, leads.c.owner_rep_id == assignments.c.rep_id),
    )
    fresh = store.read_frame(
        conn,
        select(*base)
        .select_from(joined)
        .where(
            assignments.c.released_at.is_(None),
            assignments.c.sla_stage.is_(None),
            assignments.c.rep_id.is_not(None),
            leads.c.status.in_(OWNED),
        ),
    )
    fresh = within(fresh, held)
    accepted_at = (
        select(func.min(activities.c.occurred_at))
        .where(
            activities.c.lead_id == assignments.c.lead_id,
            activities.c.activity_type == "accept",
            activities.c.occurred_at >= assignments.c.assigned_at,
        )
        .scalar_subquery()
        .label("accepted_at")
    )
    accepted = store.read_frame(
        conn,
        select(*base, accepted_at)
        .select_from(joined)
        .where(
            assignments.c.released_at.is_(None),
            assignments.c.sla_stage == "assigned",
            leads.c.status.in_(ACCEPTED),
        ),
    )
    return fresh, within(accepted, held)


def mark_stage(conn: Connection, assignment_ids: pd.Series, stage: str) -> None:
    """Record that the assignments' ``stage`` clocks started (``assignments.sla_stage``)."""
    if len(assignment_ids):
        store.update_from_frame(
            conn,
            t.assignments,
            pd.DataFrame({"id": assignment_ids.to_numpy(), "sla_stage": stage}),
        )


def insert_timers(conn: Connection, timers: pd.DataFrame) -> int:
    return store.bulk_insert(conn, t.sla_timers, timers) if len(timers) else 0


# --------------------------------------------------------------------------- meet


def watermark(conn: Connection) -> int:
    """The newest activity id a check has seen (0: none yet)."""
    value = conn.execute(
        select(t.source_cursors.c.cursor).where(t.source_cursors.c.source == WATERMARK)
    ).scalar()
    return int(value) if value else 0


def newest_activity(conn: Connection) -> int | None:
    return conn.execute(select(func.max(t.activities.c.id))).scalar()


def save_watermark(conn: Connection, value: int) -> None:
    from leadflow.capture.write import save_cursor

    save_cursor(conn, WATERMARK, f"{value:020d}")  # zero-padded: the cursor compares as text


def rewind_watermark(conn: Connection, before: int) -> None:
    """Move the watermark back to just before activity ``before`` (when it is past it): the
    next check reads the activities since again (a cancelled booking reopened clocks that a
    later activity, skipped then, now meets). Reading again is harmless: a clock is only
    ever met earlier than it was."""
    if watermark(conn) >= before:
        conn.execute(
            update(t.source_cursors)
            .where(t.source_cursors.c.source == WATERMARK)
            .values(cursor=f"{max(before - 1, 0):020d}", updated_at=store.utcnow())
        )


def first_activities(conn: Connection, rules: SlaRules, seen: int, newest: int) -> pd.DataFrame:
    """Per timer, the earliest activity of ids ``(seen, newest]`` that meets it: genuine (not
    automated), of a kind its policy counts, by its rep, after its clock started and before
    what met it so far (and before it closed, unless it closed as met). Ranked in the
    database, so a backlog of activities is one indexed join, not a frame of every pair.

    Columns: the timer's ``id``, ``lead_id``, ``rep_id``, ``policy``, ``started_at``,
    ``due_at``, ``met_at``, ``level``, ``closed_at``, ``closed_reason``, and the activity's
    ``activity_id``, ``activity_type``, ``occurred_at``; ordered by timer."""
    activities, timers = t.activities, t.sla_timers
    counts = [(p.name, kind) for p in rules.policies for kind in p.met_by]
    ranked = (
        select(
            timers.c.id,
            timers.c.lead_id,
            timers.c.rep_id,
            timers.c.policy,
            timers.c.started_at,
            timers.c.due_at,
            timers.c.met_at,
            timers.c.level,
            timers.c.closed_at,
            timers.c.closed_reason,
            activities.c.id.label("activity_id"),
            activities.c.activity_type,
            activities.c.occurred_at,
            func.row_number()
            .over(
                partition_by=timers.c.id,
                order_by=(activities.c.occurred_at, activities.c.id),
            )
            .label("rank"),
        )
        .select_from(
            activities.join(
                timers,
                and_(
                    timers.c.lead_id == activities.c.lead_id,
                    timers.c.rep_id == activities.c.rep_id,
                ),
            )
        )
        .where(
            activities.c.id > seen,
            activities.c.id <= newest,
            activities.c.automated.is_(False),
            activities.c.voided_at.is_(None),  # a cancelled booking meets nothing
            tuple_(timers.c.policy, activities.c.activity_type).in_(counts),
            activities.c.occurred_at >= timers.c.started_at,
            or_(timers.c.met_at.is_(None), activities.c.occurred_at < timers.c.met_at),
            or_(
                timers.c.closed_reason.is_(None),
                timers.c.closed_reason == "met",
                activities.c.occurred_at < timers.c.closed_at,
            ),
        )
        .subquery()
    )
    return store.read_frame(conn, select(ranked).where(ranked.c.rank == 1).order_by(ranked.c.id))


def met_before_start(conn: Connection, rules: SlaRules, assignment_ids: list[int]) -> pd.DataFrame:
    """The new open timers of ``assignment_ids`` already met before their clock started: a
    genuine activity of a kind the policy counts, by the timer's rep, after the assignment but
    before the clock's start (a ``start: accepted`` clock, e.g. ``first-meeting``, whose lead
    booked its meeting before the rep accepted). Per timer the earliest; columns as
    ``decide.met_updates`` takes them (``occurred_at``, ``activity_id``, ``closed_at`` ...)."""
    if not assignment_ids:
        return pd.DataFrame()
    activities, timers, a = t.activities, t.sla_timers, t.assignments
    counts = [(p.name, kind) for p in rules.policies for kind in p.met_by]
    ranked = (
        select(
            timers.c.id,
            timers.c.closed_at,
            timers.c.closed_reason,
            activities.c.id.label("activity_id"),
            activities.c.occurred_at,
            func.row_number()
            .over(partition_by=timers.c.id, order_by=(activities.c.occurred_at, activities.c.id))
            .label("rank"),
        )
        .select_from(
            timers.join(a, a.c.id == timers.c.assignment_id).join(
                activities,
                and_(
                    activities.c.lead_id == timers.c.lead_id,
                    activities.c.rep_id == timers.c.rep_id,
                ),
            )
        )
        .where(
            timers.c.assignment_id.in_([int(i) for i in assignment_ids]),
            timers.c.met_at.is_(None),
            timers.c.closed_at.is_(None),
            activities.c.automated.is_(False),
            activities.c.voided_at.is_(None),
            tuple_(timers.c.policy, activities.c.activity_type).in_(counts),
            activities.c.occurred_at >= a.c.assigned_at,
            activities.c.occurred_at < timers.c.started_at,
        )
        .subquery()
    )
    return store.read_frame(conn, select(ranked).where(ranked.c.rank == 1).order_by(ranked.c.id))


def write_met(conn: Connection, updates: pd.DataFrame) -> None:
    store.update_from_frame(conn, t.sla_timers, updates)


# --------------------------------------------------------------------------- escalate


def open_timers(
    conn: Connection, *conditions: Any, held: frozenset[int] | None = None
) -> pd.DataFrame:
    """Open, unmet timers matching ``conditions`` whose lead is still owned, by the timer's
    rep, through the timer's assignment, with the rep and the lead named (re-read under the
    check's lock: a lead moved before it is left alone)."""
    timers, reps, leads, assignments = t.sla_timers, t.reps, t.leads, t.assignments
    frame = store.read_frame(
        conn,
        select(
            timers.c.id,
            timers.c.lead_id,
            timers.c.rep_id,
            timers.c.assignment_id,
            timers.c.policy,
            timers.c.started_at,
            timers.c.due_at,
            timers.c.level,
            reps.c.code.label("rep_code"),
            reps.c.email.label("rep_email"),
            reps.c.name.label("rep_name"),
            reps.c.manager,
            leads.c.status,
            leads.c.first_name,
            leads.c.last_name,
            leads.c.company,
        )
        .select_from(
            timers.outerjoin(reps, reps.c.id == timers.c.rep_id)
            .join(leads, leads.c.id == timers.c.lead_id)
            .join(assignments, assignments.c.id == timers.c.assignment_id)
        )
        .where(
            timers.c.closed_at.is_(None),
            timers.c.met_at.is_(None),
            leads.c.status.in_(OWNED),
            leads.c.owner_rep_id == timers.c.rep_id,
            assignments.c.released_at.is_(None),
            *conditions,
        ),
    )
    return within(frame, held)


def timers_to_warn(conn: Connection, now: datetime, held: frozenset[int] | None) -> pd.DataFrame:
    """Open timers past their warning instant, not yet due, never warned or escalated."""
    timers = t.sla_timers
    moment = literal(now, timers.c.due_at.type)
    return open_timers(
        conn,
        timers.c.warned_at.is_(None),
        timers.c.level == 0,
        timers.c.warn_at <= moment,
        timers.c.due_at > moment,
        held=held,
    )


def timers_past_due(conn: Connection, now: datetime, held: frozenset[int] | None) -> pd.DataFrame:
    """Open timers due by ``now`` and below level 1."""
    timers = t.sla_timers
    return open_timers(
        conn, timers.c.level < 1, timers.c.due_at <= literal(now, timers.c.due_at.type), held=held
    )


def timers_to_escalate(
    conn: Connection, now: datetime, held: frozenset[int] | None
) -> pd.DataFrame:
    """Open timers past their escalation instant (policies with one) and below level 2."""
    timers = t.sla_timers
    return open_timers(
        conn,
        timers.c.level < 2,
        timers.c.escalate_at.is_not(None),
        timers.c.escalate_at <= literal(now, timers.c.escalate_at.type),
        held=held,
    )


def mark_warned(conn: Connection, ids: pd.Series, now: datetime) -> None:
    store.update_from_frame(
        conn,
        t.sla_timers,
        pd.DataFrame({"id": ids.to_numpy(), "warned_at": pd.Timestamp(now)}),
    )


def raise_level(conn: Connection, ids: pd.Series, level: int) -> None:
    """Timers ``ids`` reached ``level`` (never lowered): each level fires once."""
    if len(ids):
        store.update_from_frame(
            conn,
            t.sla_timers,
            pd.DataFrame({"id": ids.astype("int64").to_numpy(), "level": level}),
            where=t.sla_timers.c.level < level,
        )


def rep_emails(conn: Connection) -> list[tuple[Any, Any]]:
    """Every stored rep's (code, email)."""
    return [tuple(row) for row in conn.execute(select(t.reps.c.code, t.reps.c.email)).all()]


def close_timers(conn: Connection, assignment_ids: list[int], now: datetime) -> None:
    """Close the open timers of assignments routing released (``reassigned``)."""
    conn.execute(
        update(t.sla_timers)
        .where(
            t.sla_timers.c.closed_at.is_(None),
            t.sla_timers.c.assignment_id.in_(assignment_ids),
        )
        .values(closed_at=literal(now, t.sla_timers.c.closed_at.type), closed_reason="reassigned")
    )
