"""SLA escalation: warnings, level 1 (owner and manager told) and level 2 (the lead reassigned
through routing away from everyone who held it, or the manager alerted), for the check in
``leadflow/sla/check.py``. Each returns the breach rows to record and the messages to queue; the
check gates and writes them in its transaction.

Each reads the timers it acts on together with their lead *after* the check locked those
leads (``leadflow.sla.check.hold_leads``) and only while the lead is still owned by the timer's rep
through the timer's assignment: a lead that recycling (or anything else) moved before the
lock is neither escalated nor written to about, and none can move until the check commits.
``held`` is the set of leads the check locked (``None``: all of them, SQLite's one writer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, literal, select, update

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.outbox import store as outbox
from leadflow.routing import decide as routing
from leadflow.routing import notices as notify
from leadflow.routing import store as routing_store
from leadflow.routing.hop import RouteContext, fetch_reps, lead_columns
from leadflow.sla.rules import SlaRules

ACTOR = "sla"
ACTIONS = ("notified", "met_late", "reassigned", "to_manager", "manager_alerted")
# Statuses in which a rep works the lead: the only ones a timer runs, warns and escalates in.
OWNED = (Status.ROUTED.value, Status.ACCEPTED.value, Status.QUALIFIED.value)
# The routing hop's turn (its SERIAL claim, ``leadflow.queue``): level 2 shares its counters.
ROUTE_TURN = "leadflow.route"


@dataclass(frozen=True)
class SlaContext:
    rules: SlaRules
    version: str
    route: RouteContext  # routing rules: reps, managers, and reassignment


# --------------------------------------------------------------------------- 4. escalate


def empty_breaches() -> pd.DataFrame:
    return pd.DataFrame(
        columns=[
            "timer_id",
            "lead_id",
            "rep_id",
            "policy",
            "level",
            "action",
            "reason",
            "new_rep_id",
            "due_at",
            "recorded_at",
            "flow_run_id",
        ]
    )


def breach_rows(
    timers: pd.DataFrame,
    *,
    level: int,
    action: str | list[str],
    reasons: list[str],
    now: datetime,
    flow_run_id: str | None,
    new_rep_ids: Any = None,
) -> pd.DataFrame:
    if timers.empty:
        return empty_breaches()
    return pd.DataFrame(
        {
            "timer_id": timers["id"].astype("int64").to_numpy(),
            "lead_id": timers["lead_id"].astype("int64").to_numpy(),
            "rep_id": timers["rep_id"].astype("Int64").to_numpy(),
            "policy": timers["policy"].to_numpy(),
            "level": level,
            "action": action,
            "reason": reasons,
            "new_rep_id": pd.array(
                [None] * len(timers) if new_rep_ids is None else new_rep_ids, dtype="Int64"
            ),
            "due_at": timers["due_at"].to_numpy(),
            "recorded_at": pd.Timestamp(now),
            "flow_run_id": flow_run_id,
        }
    )


def raise_level(conn: Connection, ids: pd.Series, level: int) -> None:
    if len(ids):
        store.update_from_frame(
            conn,
            t.sla_timers,
            pd.DataFrame({"id": ids.astype("int64").to_numpy(), "level": level}),
            where=t.sla_timers.c.level < level,
        )


def within(frame: pd.DataFrame, held: frozenset[int] | None) -> pd.DataFrame:
    """The rows of ``frame`` (by ``lead_id``) whose lead the check holds locked."""
    if held is None or frame.empty:
        return frame
    return frame[frame["lead_id"].astype("int64").isin(held)].reset_index(drop=True)


def _open_timers(
    conn: Connection, *conditions: Any, held: frozenset[int] | None = None
) -> pd.DataFrame:
    """Open, unmet timers matching ``conditions`` whose lead is still owned, by the timer's
    rep, through the timer's assignment (re-read under the check's lock: see the module)."""
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


def _manager_emails(context: SlaContext, conn: Connection) -> dict[str, str]:
    """Manager field (a rep id or an email) -> the email to write to."""
    by_code = {rep.id: rep.email for rep in context.route.rules.reps}
    for code, email in conn.execute(select(t.reps.c.code, t.reps.c.email)).all():
        if code:
            by_code.setdefault(code, email)
    out = {}
    for rep in context.route.rules.reps:
        if rep.manager:
            out[rep.manager] = by_code.get(rep.manager, rep.manager)
    return out


def _who(row: Any) -> str:
    name = " ".join(str(p) for p in (row.first_name, row.last_name) if isinstance(p, str))
    return f"{name or 'lead ' + str(row.lead_id)} ({row.company or 'no company'})"


def warn(
    conn: Connection,
    now: datetime,
    flow_run_id: str | None,
    held: frozenset[int] | None = None,
) -> tuple[int, pd.DataFrame]:
    """Owners of timers past their warning instant, not yet due, get one warning each."""
    timers = t.sla_timers
    moment = literal(now, timers.c.due_at.type)
    due = _open_timers(
        conn,
        timers.c.warned_at.is_(None),
        timers.c.level == 0,
        timers.c.warn_at <= moment,
        timers.c.due_at > moment,
        held=held,
    )
    if due.empty:
        return 0, pd.DataFrame(columns=list(outbox.MESSAGE_COLUMNS))
    store.update_from_frame(
        conn, timers, pd.DataFrame({"id": due["id"].to_numpy(), "warned_at": pd.Timestamp(now)})
    )
    messages = pd.DataFrame(
        {
            "idempotency_key": [f"sla:{i}:warning" for i in due["id"]],
            "kind": "sla_escalation",
            "channel": "email",
            "recipient": due["rep_email"].to_numpy(),
            "lead_id": due["lead_id"].to_numpy(),
            "subject": [f"SLA warning: {row.policy} for {_who(row)}" for row in due.itertuples()],
            "body": [
                f"{row.policy} is due at {row.due_at:%Y-%m-%d %H:%M} UTC for {_who(row)}, "
                f"lead {row.lead_id}. Log your first activity before then."
                for row in due.itertuples()
            ],
        }
    )
    return len(due), messages


def level_one(
    conn: Connection,
    context: SlaContext,
    now: datetime,
    flow_run_id: str | None,
    held: frozenset[int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Timers past due and unmet: one breach each, owner and manager notified."""
    timers = t.sla_timers
    late = _open_timers(
        conn, timers.c.level < 1, timers.c.due_at <= literal(now, timers.c.due_at.type), held=held
    )
    if late.empty:
        return empty_breaches(), pd.DataFrame(columns=list(outbox.MESSAGE_COLUMNS))
    reasons = [
        f"{row.policy}: no qualifying activity by {row.due_at:%Y-%m-%d %H:%M} UTC "
        f"(started {row.started_at:%Y-%m-%d %H:%M} UTC, owner {row.rep_code})"
        for row in late.itertuples()
    ]
    breaches = breach_rows(
        late, level=1, action="notified", reasons=reasons, now=now, flow_run_id=flow_run_id
    )
    raise_level(conn, late["id"], 1)
    managers = _manager_emails(context, conn)
    messages = []
    for row, reason in zip(late.itertuples(), reasons, strict=True):
        recipients = [("owner", row.rep_email)]
        manager = managers.get(row.manager) if isinstance(row.manager, str) else None
        if manager:
            recipients.append(("manager", manager))
        for role, email in recipients:
            if not isinstance(email, str):
                continue
            messages.append(
                {
                    "idempotency_key": f"sla:{row.id}:1:{role}",
                    "kind": "sla_escalation",
                    "channel": "email",
                    "recipient": email,
                    "lead_id": row.lead_id,
                    "subject": f"SLA breached: {row.policy} for {_who(row)}",
                    "body": f"{reason}. Lead {row.lead_id}.",
                }
            )
    return breaches, pd.DataFrame(messages, columns=list(outbox.MESSAGE_COLUMNS)[:7])


def level_two(
    conn: Connection,
    context: SlaContext,
    now: datetime,
    flow_run_id: str | None,
    held: frozenset[int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Timers past their escalation instant: reassign the lead (``escalate: reassign`` and
    the lead still only routed) or alert the manager."""
    timers = t.sla_timers
    late = _open_timers(
        conn,
        timers.c.level < 2,
        timers.c.escalate_at.is_not(None),
        timers.c.escalate_at <= literal(now, timers.c.escalate_at.type),
        held=held,
    )
    if late.empty:
        return empty_breaches(), pd.DataFrame(columns=list(outbox.MESSAGE_COLUMNS))
    policies = {p.name: p for p in context.rules.policies}
    reassign = late["policy"].map(lambda name: policies[name].escalate == "reassign") & (
        late["status"] == Status.ROUTED.value
    )
    parts, messages = [], []
    alert = late[~reassign]
    if len(alert):
        managers = _manager_emails(context, conn)
        reasons = [
            f"{row.policy}: still no qualifying activity at the escalation time; manager alerted"
            for row in alert.itertuples()
        ]
        parts.append(
            breach_rows(
                alert,
                level=2,
                action="manager_alerted",
                reasons=reasons,
                now=now,
                flow_run_id=flow_run_id,
            )
        )
        for row, reason in zip(alert.itertuples(), reasons, strict=True):
            email = managers.get(row.manager) if isinstance(row.manager, str) else None
            if email:
                messages.append(
                    {
                        "idempotency_key": f"sla:{row.id}:2:manager",
                        "kind": "sla_escalation",
                        "channel": "email",
                        "recipient": email,
                        "lead_id": row.lead_id,
                        "subject": f"SLA escalation: {row.policy} for {_who(row)}",
                        "body": f"{reason}. Owner {row.rep_code}, lead {row.lead_id}.",
                    }
                )
    if reassign.any():
        moved, queued = reassign_leads(conn, context, late[reassign], now, flow_run_id)
        parts.append(moved)
        if len(queued):
            messages.extend(queued.to_dict("records"))
    raise_level(conn, late["id"], 2)
    breaches = pd.concat([p for p in parts if len(p)], ignore_index=True) if parts else None
    return (
        breaches if breaches is not None and len(breaches) else empty_breaches(),
        pd.DataFrame(messages) if messages else pd.DataFrame(columns=list(outbox.MESSAGE_COLUMNS)),
    )


def reassign_leads(
    conn: Connection,
    context: SlaContext,
    late: pd.DataFrame,
    now: datetime,
    flow_run_id: str | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Route each lead again, excluding every rep who ever held it; nobody left: the current
    owner's manager (else the fallback queue's owner), with that reason. Writes the released
    and new assignments, the owner, the ledger, the round-robin counters and the new owner's
    notification. Returns level-2 breach rows (one per escalating timer) and messages."""
    route = context.route
    # The router's turn: the round-robin counters are shared with route runs. The check took
    # it before locking any lead (``leadflow.sla.check.hold_leads``); taking it again is a no-op.
    store.serialize_writers(conn, ROUTE_TURN)
    lead_ids = sorted(set(late["lead_id"].astype("int64")))
    leads = store.read_frame_by_ids(conn, lead_columns(route), t.leads.c.id, lead_ids)
    leads = leads[leads["status"] == Status.ROUTED.value]
    held = store.read_frame_by_ids(
        conn, [t.assignments.c.lead_id, t.assignments.c.rep_code], t.assignments.c.lead_id, lead_ids
    )
    exclude = held.groupby("lead_id")["rep_code"].agg(lambda s: sorted(set(s))).to_dict()
    leads["exclude"] = leads["id"].map(lambda i: exclude.get(int(i), []))
    inputs = fetch_reps(conn, leads, route, now)
    leads = leads.assign(account_owner=routing_store.account_owner_codes(leads, inputs.rep_ids))
    result = routing.route_leads(leads, route.rules, inputs.state, now, version=route.version)
    decided = result.assignments.copy()
    current = late.drop_duplicates("lead_id").set_index("lead_id")
    fallback = route.rules.fallback.owner
    reps_by_email = {rep.email.lower(): rep.id for rep in route.rules.reps}
    by_code = {rep.id for rep in route.rules.reps}
    owners, steps, reasons = [], [], []
    for lead_id, owner, step, why_routed in zip(
        decided["id"].astype("int64"), decided["owner"], decided["step"], decided["reason"],
        strict=True,
    ):  # fmt: skip
        gone = set(exclude.get(int(lead_id), []))
        was = current.loc[int(lead_id)]
        breached = f"SLA {was['policy']} breached by {was['rep_code']}"
        if step in ("rule", "account_owner") and owner not in gone:
            owners.append(owner)
            steps.append("sla_reassign")
            reasons.append(f"{breached} → {why_routed}")
            continue
        manager = was["manager"]
        code = None
        if isinstance(manager, str):
            code = manager if manager in by_code else reps_by_email.get(manager.lower())
        why = "nobody left who has not held it" if step != "waiting" else "the pool is at capacity"
        if code and code not in gone:
            owner, where = code, f"manager {code}"
        else:
            owner, where = fallback, f"fallback queue owner {fallback} (no manager to take it)"
        owners.append(owner)
        steps.append("sla_manager")
        reasons.append(f"{breached}; {why} ({', '.join(sorted(gone))} held it) → {where}")
    decided["owner"], decided["step"], decided["reason"] = owners, steps, reasons
    decided = decided[decided["owner"].notna()]
    rep_ids = inputs.rep_ids
    missing = sorted(set(decided["owner"]) - set(rep_ids))
    if missing:
        raise ValueError(f"SLA reassignment to reps not in the routing rules: {missing}")
    # Release the old assignments and their timers, record the new ones.
    old = late.drop_duplicates("lead_id")
    old = old[old["lead_id"].isin(decided["id"])]
    store.update_from_frame(
        conn,
        t.assignments,
        pd.DataFrame(
            {
                "id": old["assignment_id"].astype("int64").to_numpy(),
                "released_at": pd.Timestamp(now),
                "released_reason": [f"sla: {p} level 2" for p in old["policy"]],
            }
        ),
    )
    conn.execute(
        update(t.sla_timers)
        .where(
            t.sla_timers.c.closed_at.is_(None),
            t.sla_timers.c.assignment_id.in_([int(i) for i in old["assignment_id"]]),
        )
        .values(closed_at=literal(now, t.sla_timers.c.closed_at.type), closed_reason="reassigned")
    )
    store.bulk_insert(
        conn, t.assignments, routing_store.assignment_rows(decided, rep_ids, now, flow_run_id)
    )
    changes = pd.DataFrame(
        {
            "id": decided["id"].astype("int64").to_numpy(),
            "from_status": Status.ROUTED.value,
            "to_status": Status.ROUTED.value,
            "owner_rep_id": decided["owner"].map(rep_ids).to_numpy(),
        }
    )
    lifecycle.apply(conn, changes, actor=ACTOR, at=now, flow_run_id=flow_run_id)
    lifecycle.record_reassignments(
        conn,
        decided["id"],
        status=Status.ROUTED.value,
        reasons=decided["reason"],
        details=[
            json.dumps({"to": owner, "step": step})
            for owner, step in zip(decided["owner"], decided["step"], strict=True)
        ],
        actor=ACTOR,
        at=now,
        flow_run_id=flow_run_id,
    )
    routing_store.write_state(conn, result.reps_state, now)
    messages = notify.owner_messages(decided, leads, route.rules, now, busy=inputs.busy)
    new_owner = dict(zip(decided["id"].astype("int64"), decided["owner"].map(rep_ids), strict=True))
    step_of = dict(zip(decided["id"].astype("int64"), decided["step"], strict=True))
    reason_of = dict(zip(decided["id"].astype("int64"), decided["reason"], strict=True))
    escalating = late[late["lead_id"].isin(decided["id"])]
    breaches = breach_rows(
        escalating,
        level=2,
        action=[
            "reassigned" if step_of[int(i)] == "sla_reassign" else "to_manager"
            for i in escalating["lead_id"]
        ],
        reasons=[reason_of[int(i)] for i in escalating["lead_id"]],
        now=now,
        flow_run_id=flow_run_id,
        new_rep_ids=[new_owner[int(i)] for i in escalating["lead_id"]],
    )
    held_before = {int(k): set(v) for k, v in exclude.items()}
    code_of = {v: k for k, v in rep_ids.items()}
    breaches["new_rep_held_before"] = [
        code_of.get(int(n)) in held_before.get(int(lead), set()) and a == "reassigned"
        for n, lead, a in zip(
            breaches["new_rep_id"], breaches["lead_id"], breaches["action"], strict=True
        )
    ]
    return breaches, messages
