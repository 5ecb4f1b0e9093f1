"""Response SLAs, checked set-based: timers started, met, warned, breached and escalated.

A check at ``now`` (one at a time: the ``sla`` writer lock) does, in one transaction:

0. **hold** (PostgreSQL) the leads it will act on, before it reads anything it decides on;
   see ``hold_leads`` for the lock order every writer of leads, assignments and timers keeps;
1. **close** the timers of assignments that ended (reassigned, rejected) and of leads that
   left the owned statuses;
2. **start** timers for new assignments (and for acceptances, for ``start: accepted``
   policies), with their warning, due and escalation instants computed once, in the owner's
   business time (``Timeline``): everything after is comparisons of stored instants;
3. **meet** timers with the activities that arrived since the last check (the earliest
   genuine one wins, whenever it arrives; automated touches never count); a timer met after
   its due time gets its level-1 breach recorded as ``met_late``;
4. **warn** owners of timers past ``warn_at``; **level 1**: notify owner and manager;
   **level 2**: reassign through routing, excluding every rep who held the lead (nobody left:
   the manager), or alert the manager, per policy. ``sla_timers.level`` and the unique
   (timer, level) of ``sla_breaches`` make each level fire once however often checks run;
5. **gate** the breaches with ``suites/sla.yaml`` (none twice, every escalation has a reason);
   a failing gate rolls the whole check back and is recorded.

Each step reads and writes through ``leadflow/sla/store.py`` and decides in
``leadflow/sla/decide.py`` (pure: the timers' deadlines, what met them, who is warned,
notified and escalated); level 2 reassigns through routing's ``leadflow.routing.reassign``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, and_, case, func, literal, or_, select, union, update

from leadflow import quality, store
from leadflow import tables as t
from leadflow.business_time import WorkingCalendar, calendar_of
from leadflow.crm import store as crm
from leadflow.outbox import store as outbox
from leadflow.routing.reassign import TURN as ROUTE_TURN
from leadflow.routing.rules import Rep
from leadflow.sla import decide
from leadflow.sla import store as sla_store
from leadflow.sla.escalate import SlaContext, level_one, level_two, warn
from leadflow.sla.store import ACCEPTED, OWNED

SUITE = "sla"


@dataclass
class CheckResult:
    now: datetime
    closed: int = 0
    started: int = 0
    met: int = 0
    warned: int = 0
    breaches: pd.DataFrame = field(default_factory=pd.DataFrame)
    queued: int = 0
    gate: quality.GateResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per step, for ops and bench

    def summary(self) -> dict[str, Any]:
        breaches = self.breaches
        actions = breaches["action"].value_counts().to_dict() if len(breaches) else {}
        return {
            "now": self.now.isoformat(),
            "timers_started": self.started,
            "timers_met": self.met,
            "timers_closed": self.closed,
            "warnings": self.warned,
            "level_1": int((breaches["level"] == 1).sum()) if len(breaches) else 0,
            "level_2": int((breaches["level"] == 2).sum()) if len(breaches) else 0,
            "actions": {k: int(v) for k, v in actions.items()},
            "messages_queued": self.queued,
            "step_seconds": self.seconds,
        }


class _Clock:
    """Record how long each step of a check took (the time since the previous step)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.last = into, time.perf_counter()

    def __call__(self, name: str, value: Any) -> Any:
        now = time.perf_counter()
        self.into[name] = round(now - self.last, 3)
        self.last = now
        return value


# --------------------------------------------------------------------------- calendars


def calendars(conn: Connection, context: SlaContext) -> dict[int, WorkingCalendar]:
    """Every rep's working calendar by ``reps.id``: the routing rules' reps as they say, other
    reps (no longer in the rules, still holding leads) from their stored row."""
    in_rules = {rep.id: rep for rep in context.route.rules.reps}
    out: dict[int, WorkingCalendar] = {}
    rows = conn.execute(
        select(
            t.reps.c.id,
            t.reps.c.code,
            t.reps.c.name,
            t.reps.c.email,
            t.reps.c.timezone,
            t.reps.c.working_hours,
            t.reps.c.country,
        )
    ).all()
    for row in rows:
        rep = in_rules.get(row.code or "")
        if rep is None:
            try:
                rep = Rep(
                    id=row.code or f"rep-{row.id}",
                    name=row.name,
                    email=row.email,
                    timezone=row.timezone or "UTC",
                    working_hours=store.json_value(row.working_hours)
                    or {"mon-fri": ["09:00-17:00"]},
                    country=row.country,
                )
            except ValueError:
                rep = Rep(id=f"rep-{row.id}", name=row.name or "?", email="unknown@invalid.example")
        out[int(row.id)] = calendar_of(rep)
    return out


# --------------------------------------------------------------------------- 0. hold


def hold_leads(conn: Connection, context: SlaContext, now: datetime) -> frozenset[int] | None:
    """Take the check's turns and lock the leads it may act on, before it reads them; returns
    the leads held (``None`` on SQLite: the check's transaction is the only writer).

    The lock order, kept by every writer of leads, assignments and timers (no cycle, so no
    deadlock between SLA checks, recycling and routing):

    1. advisory turns first: ``sla`` (the caller's), ``capture`` (activities, and the accepts
       and rejects they apply, wait for the check), ``leadflow.route`` when a timer may be
       reassigned (the round-robin counters; routing holds it while it writes MQLs, which
       the check never locks);
    2. lead rows, in id order: here the owned leads with a timer to warn or escalate or an
       assignment whose timers start, ``FOR NO KEY UPDATE``. Recycling claims ``FOR UPDATE
       SKIP LOCKED``, so it passes over them until the check commits; leads it already holds
       are waited for, and the check then reads them moved and leaves them alone;
    3. only then their assignments and timers (recycling likewise writes its own leads'
       only, and skips a timer a check is closing rather than wait for it).
    """
    if not store.is_postgres(conn):
        return None
    store.serialize_writers(conn, "capture")
    timers, assignments, leads = t.sla_timers, t.assignments, t.leads
    moment = literal(now, timers.c.due_at.type)
    unmet = and_(timers.c.closed_at.is_(None), timers.c.met_at.is_(None))
    escalating = and_(timers.c.level < 2, timers.c.escalate_at <= moment)
    reassigning = [p.name for p in context.rules.policies if p.escalate == "reassign"]
    may_reassign = select(timers.c.id).where(unmet, escalating, timers.c.policy.in_(reassigning))
    if reassigning and conn.execute(may_reassign.limit(1)).first():
        store.serialize_writers(conn, ROUTE_TURN)
    due = select(timers.c.lead_id).where(
        unmet,
        or_(
            and_(timers.c.warned_at.is_(None), timers.c.level == 0, timers.c.warn_at <= moment),
            and_(timers.c.level < 1, timers.c.due_at <= moment),
            escalating,
        ),
    )
    fresh = select(assignments.c.lead_id).where(
        assignments.c.released_at.is_(None),
        assignments.c.sla_stage.is_(None),
        assignments.c.rep_id.is_not(None),
    )
    accepting = leads.alias("accepting")
    accepted = (
        select(assignments.c.lead_id)
        .join(accepting, accepting.c.id == assignments.c.lead_id)
        .where(
            assignments.c.released_at.is_(None),
            assignments.c.sla_stage == "assigned",
            accepting.c.status.in_(ACCEPTED),
        )
    )
    locked = conn.execute(
        select(leads.c.id)
        .where(leads.c.id.in_(union(due, fresh, accepted)), leads.c.status.in_(OWNED))
        .order_by(leads.c.id)
        .with_for_update(key_share=True, of=leads)
    ).scalars()
    return frozenset(int(i) for i in locked)


# --------------------------------------------------------------------------- 1. close


def close_ended(conn: Connection, now: datetime) -> int:
    """Close open timers whose assignment ended or whose lead is no longer owned."""
    timers, assignments, leads = t.sla_timers, t.assignments, t.leads
    moment = literal(now, timers.c.closed_at.type)
    ended = conn.execute(
        update(timers)
        .where(
            timers.c.closed_at.is_(None),
            timers.c.assignment_id.in_(
                select(assignments.c.id).where(assignments.c.released_at.is_not(None))
            ),
        )
        .values(closed_at=moment, closed_reason="reassigned")
    ).rowcount
    status = select(leads.c.status).where(leads.c.id == timers.c.lead_id).scalar_subquery()
    left = conn.execute(
        update(timers)
        .where(
            timers.c.closed_at.is_(None),
            timers.c.lead_id.in_(select(leads.c.id).where(leads.c.status.not_in(OWNED))),
        )
        .values(closed_at=moment, closed_reason=literal("lead left: ") + status)
    ).rowcount
    return ended + left


# --------------------------------------------------------------------------- 2. start


def start_timers(
    conn: Connection,
    context: SlaContext,
    calendars_: dict[int, WorkingCalendar],
    now: datetime,
    held: frozenset[int] | None = None,
) -> int:
    """Timers for assignments not yet seen (``start: assigned`` policies, from the
    assignment) and for leads accepted since (``start: accepted``, from the acceptance), of
    the leads the check holds (an assignment routed since it locked them starts its timers at
    the next check, from its assignment time all the same). Returns the timers started.

    Steps: read both kinds of assignment (``sla_store.assignments_to_start``, before either
    is marked), decide their timers and deadlines (``decide.timers_to_start``, pure), mark
    each assignment's stage so it starts once, insert the timers.

    Example: a hot lead assigned to ann at Monday 15:00 UTC under ``hot-first-touch`` (15m,
    escalate after 1h) and ``acceptance`` (2d): two timers started 15:00, the first warned at
    15:12, due 15:15 and escalated 16:00 (ann's working hours), the assignment's stage
    ``assigned``; once the lead is accepted, the next check starts its ``start: accepted``
    policies' timers from the acceptance and marks the stage ``accepted``.
    """
    fresh, accepted = sla_store.assignments_to_start(conn, context.rules, held)
    timers = decide.timers_to_start(fresh, accepted, context.rules, calendars_, now)
    sla_store.mark_stage(conn, fresh["assignment_id"], "assigned")
    sla_store.mark_stage(conn, accepted["assignment_id"], "accepted")
    started = sla_store.insert_timers(conn, timers)
    # A clock that starts at acceptance may already be met (a meeting booked before it).
    early = sla_store.met_before_start(conn, context.rules, accepted["assignment_id"].tolist())
    if not early.empty:
        zero = np.zeros(len(early))  # met before it started: no business time
        sla_store.write_met(conn, decide.met_updates(early, zero, now))
    return started


# --------------------------------------------------------------------------- 3. meet


def meet_timers(
    conn: Connection,
    context: SlaContext,
    calendars_: dict[int, WorkingCalendar],
    now: datetime,
    flow_run_id: str | None,
) -> tuple[int, pd.DataFrame]:
    """Meet timers with the activities received since the last check. Returns the timers
    met (or met earlier than known) and level-1 breach rows for those met after their due
    time. Capture takes turns with this step, so no activity commits behind the watermark.

    Steps: take capture's turn; the activities between the watermark and the newest
    (``sla_store.first_activities``: per timer, the earliest genuine one that meets it);
    their business minutes, the timers' update and the ``met_late`` breaches
    (``decide.business_minutes``, ``decide.met_updates``, ``decide.met_late``, pure); write
    the update, raise the late timers to level 1, move the watermark.

    Example: timer ``hot-first-touch`` started 15:00, due 15:15; a call at 15:20 arrives:
    met at 15:20 by it, 20 business minutes, closed ``met``, one ``met_late`` breach, level 1.
    A call at 15:09 logged later still wins: met at 15:09, 9 minutes, no second breach.
    """
    store.serialize_writers(conn, "capture")
    seen = sla_store.watermark(conn)
    newest = sla_store.newest_activity(conn) or seen
    if newest <= seen:
        sla_store.save_watermark(conn, seen)
        return 0, decide.empty_breaches()
    first = sla_store.first_activities(conn, context.rules, seen, newest)
    if first.empty:
        sla_store.save_watermark(conn, newest)
        return 0, decide.empty_breaches()
    minutes = decide.business_minutes(first, calendars_)
    sla_store.write_met(conn, decide.met_updates(first, minutes, now))
    breaches = decide.met_late(first, minutes, now, flow_run_id)
    sla_store.raise_level(conn, breaches["timer_id"], 1)
    sla_store.save_watermark(conn, newest)
    return len(first), breaches


# --------------------------------------------------------------------------- the check


def gate_frame(breaches: pd.DataFrame) -> pd.DataFrame:
    """What ``suites/sla.yaml`` reads."""
    frame = breaches.copy()
    frame["breach_key"] = frame["timer_id"].astype(str) + ":" + frame["level"].astype(str)
    if "new_rep_held_before" not in frame.columns:
        frame["new_rep_held_before"] = False
    frame["new_rep_held_before"] = frame["new_rep_held_before"].fillna(False).astype(bool)
    return frame


def check(
    conn: Connection,
    context: SlaContext,
    now: datetime,
    *,
    flow_run_id: str | None = None,
) -> CheckResult:
    """One SLA check at ``now`` in the caller's transaction (see the module's docstring).
    Raises ``quality.GateFailed`` (after nothing was written: the caller rolls back)."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    store.serialize_writers(conn, "sla")
    result = CheckResult(now=now)
    clock = _Clock(result.seconds)
    calendars_ = clock("calendars", calendars(conn, context))
    # From here on, the leads the check acts on cannot move until it commits: it decides
    # on what it reads under the lock (see hold_leads for the order locks are taken in).
    held = clock("hold", hold_leads(conn, context, now))
    result.closed = clock("close", close_ended(conn, now))
    result.started = clock("start", start_timers(conn, context, calendars_, now, held))
    result.met, met_late = clock("meet", meet_timers(conn, context, calendars_, now, flow_run_id))
    result.warned, warnings = clock("warn", warn(conn, now, flow_run_id, held))
    first, notices = clock("level_1", level_one(conn, context, now, flow_run_id, held))
    second, escalations = clock("level_2", level_two(conn, context, now, flow_run_id, held))
    # Reassigned leads (held: level 2 only acts on those) start their new owner's clocks.
    result.started += clock("restart", start_timers(conn, context, calendars_, now, held))
    parts = [p for p in (met_late, first, second) if len(p)]
    breaches = pd.concat(parts, ignore_index=True) if parts else decide.empty_breaches()
    gate = quality.check_batch(
        SUITE,
        gate_frame(breaches),
        batch_ref=f"sla:{now.isoformat()}:{flow_run_id or store.utcnow().isoformat()}",
        received=len(breaches),
        quarantined=0,
    )
    result.gate = clock("gate", gate)
    if not gate.success:
        raise quality.GateFailed(gate)
    if len(breaches):
        store.bulk_insert(
            conn, t.sla_breaches, breaches.drop(columns=["new_rep_held_before"], errors="ignore")
        )
        # A breach flag in the CRM, in the same transaction (leadflow/crm/store.py).
        crm.note(
            conn,
            breaches["lead_id"],
            changed={"sla"},
            actor="sla",
            now=now,
            flow_run_id=flow_run_id,
        )
    # ...and its end: breached clocks this check closed (met late, reassigned, the lead left).
    cleared = (
        conn.execute(
            select(t.sla_timers.c.lead_id)
            .where(t.sla_timers.c.closed_at == now, t.sla_timers.c.level >= 1)
            .distinct()
        )
        .scalars()
        .all()
    )
    crm.note(conn, cleared, changed={"sla"}, actor="sla", now=now, flow_run_id=flow_run_id)
    messages = [m for m in (warnings, notices, escalations) if len(m)]
    if messages:
        result.queued = outbox.enqueue(
            conn, pd.concat(messages, ignore_index=True), now=now, flow_run_id=flow_run_id
        )
    clock("write", None)
    result.breaches = breaches
    quality.record(conn, gate, flow_run_id=flow_run_id, at=now)
    return result


# --------------------------------------------------------------------------- reading


def open_breaches(conn: Connection, limit: int = 200) -> pd.DataFrame:
    """Breached timers still unmet and open, most overdue first."""
    timers, reps = t.sla_timers, t.reps
    return store.read_frame(
        conn,
        select(
            timers.c.lead_id,
            reps.c.code.label("rep"),
            timers.c.policy,
            timers.c.level,
            timers.c.started_at,
            timers.c.due_at,
        )
        .select_from(timers.outerjoin(reps, reps.c.id == timers.c.rep_id))
        .where(timers.c.closed_at.is_(None), timers.c.met_at.is_(None), timers.c.level > 0)
        .order_by(timers.c.due_at)
        .limit(limit),
    )


def compliance(conn: Connection) -> pd.DataFrame:
    """Per policy and rep: timers, met on time, met late, still open past due, the share met
    on time (of those decided) and the median business minutes to the first activity.
    Aggregated in the database: a million timers never cross the wire."""
    timers, reps = t.sla_timers, t.reps
    met = timers.c.met_at.is_not(None)
    on_time = func.sum(case((and_(met, timers.c.met_at <= timers.c.due_at), 1), else_=0))
    late = func.sum(case((and_(met, timers.c.met_at > timers.c.due_at), 1), else_=0))
    open_ = func.sum(case((and_(~met, timers.c.level > 0), 1), else_=0))
    if store.is_postgres(conn):
        middle = func.percentile_cont(0.5).within_group(timers.c.business_minutes)
    else:  # SQLite has no percentile: the mean (the demo's size)
        middle = func.avg(timers.c.business_minutes)
    frame = store.read_frame(
        conn,
        select(
            timers.c.policy,
            reps.c.code.label("rep"),
            func.count().label("timers"),
            on_time.label("on_time"),
            late.label("late"),
            open_.label("breached_open"),
            middle.label("median_minutes"),
        )
        .select_from(timers.outerjoin(reps, reps.c.id == timers.c.rep_id))
        .group_by(timers.c.policy, reps.c.code)
        .order_by(timers.c.policy, reps.c.code),
    )
    if frame.empty:
        return pd.DataFrame(
            columns=[
                "policy", "rep", "timers", "on_time", "late", "breached_open",
                "median_minutes", "compliance",
            ]
        )  # fmt: skip
    for name in ("timers", "on_time", "late", "breached_open"):
        frame[name] = frame[name].astype("int64")
    frame["median_minutes"] = frame["median_minutes"].astype("float64").round(1)
    decided = frame["on_time"] + frame["late"] + frame["breached_open"]
    frame["compliance"] = (frame["on_time"] / decided.where(decided > 0)).round(3)
    return frame


# --------------------------------------------------------------------------- Prefect
