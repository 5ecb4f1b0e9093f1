"""SLA escalation: warnings, level 1 (owner and manager told) and level 2 (the lead reassigned
through routing away from everyone who held it, or the manager alerted), for the check in
``leadflow/sla/check.py``. Each returns the breach rows to record and the messages to queue; the
check gates and writes them in its transaction.

Each reads the timers it acts on together with their lead *after* the check locked those
leads (``leadflow.sla.check.hold_leads``) and only while the lead is still owned by the timer's rep
through the timer's assignment: a lead that recycling (or anything else) moved before the
lock is neither escalated nor written to about, and none can move until the check commits.
``held`` is the set of leads the check locked (``None``: all of them, SQLite's one writer).

The SQL is ``leadflow/sla/store.py``'s, the decisions ``leadflow/sla/decide.py``'s; level 2
hands the leads it reassigns to routing's public entry point, ``leadflow.routing.reassign``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd
from sqlalchemy import Connection

from leadflow.routing.reassign import RouteContext, reassign
from leadflow.sla import decide
from leadflow.sla import store as sla_store
from leadflow.sla.rules import SlaRules

ACTOR = "sla"
ACTIONS = ("notified", "met_late", "reassigned", "to_manager", "manager_alerted")


@dataclass(frozen=True)
class SlaContext:
    rules: SlaRules
    version: str
    route: RouteContext  # routing rules: reps, managers, and reassignment


# --------------------------------------------------------------------------- 4. escalate


def manager_emails(context: SlaContext, conn: Connection) -> dict[str, str]:
    """Manager field (a rep id or an email) -> the email to write to."""
    return decide.manager_emails(context.route.rules.reps, sla_store.rep_emails(conn))


def warn(
    conn: Connection,
    now: datetime,
    flow_run_id: str | None,
    held: frozenset[int] | None = None,
) -> tuple[int, pd.DataFrame]:
    """Owners of timers past their warning instant, not yet due, get one warning each."""
    due = sla_store.timers_to_warn(conn, now, held)
    if due.empty:
        return 0, decide.no_messages()
    sla_store.mark_warned(conn, due["id"], now)
    return len(due), decide.warning_messages(due)


def level_one(
    conn: Connection,
    context: SlaContext,
    now: datetime,
    flow_run_id: str | None,
    held: frozenset[int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Timers past due and unmet: one breach each, owner and manager notified."""
    late = sla_store.timers_past_due(conn, now, held)
    if late.empty:
        return decide.empty_breaches(), decide.no_messages()
    reasons = decide.level_one_reasons(late)
    breaches = decide.breach_rows(
        late, level=1, action="notified", reasons=reasons, now=now, flow_run_id=flow_run_id
    )
    sla_store.raise_level(conn, late["id"], 1)
    messages = decide.level_one_messages(late, reasons, manager_emails(context, conn))
    return breaches, messages


def level_two(
    conn: Connection,
    context: SlaContext,
    now: datetime,
    flow_run_id: str | None,
    held: frozenset[int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Timers past their escalation instant: reassign the lead (``escalate: reassign`` and
    the lead still only routed) or alert the manager."""
    late = sla_store.timers_to_escalate(conn, now, held)
    if late.empty:
        return decide.empty_breaches(), decide.no_messages()
    moving = decide.reassigning(late, context.rules)
    parts, messages = [], []
    alert = late[~moving]
    if len(alert):
        reasons = decide.alert_reasons(alert)
        parts.append(
            decide.breach_rows(
                alert,
                level=2,
                action="manager_alerted",
                reasons=reasons,
                now=now,
                flow_run_id=flow_run_id,
            )
        )
        messages.extend(decide.alert_messages(alert, reasons, manager_emails(context, conn)))
    if moving.any():
        moved, queued = reassign_leads(conn, context, late[moving], now, flow_run_id)
        parts.append(moved)
        if len(queued):
            messages.extend(queued.to_dict("records"))
    sla_store.raise_level(conn, late["id"], 2)
    breaches = pd.concat([p for p in parts if len(p)], ignore_index=True) if parts else None
    return (
        breaches if breaches is not None and len(breaches) else decide.empty_breaches(),
        pd.DataFrame(messages) if messages else decide.no_messages(),
    )


def reassign_leads(
    conn: Connection,
    context: SlaContext,
    late: pd.DataFrame,
    now: datetime,
    flow_run_id: str | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hand the leads of the timers ``late`` to routing (``leadflow.routing.reassign``): each
    is routed again away from every rep who ever held it; nobody left, the owner's manager
    (else the fallback queue's owner) takes it. Routing writes the assignments, owners, ledger,
    counters; the released assignments' timers close as ``reassigned`` in between (the lock
    order). Returns level-2 breach rows (one per escalating timer) and the new owners'
    notifications."""
    done = reassign(
        conn,
        decide.reassign_requests(late),
        context.route,
        now,
        label=ACTOR,
        actor=ACTOR,
        flow_run_id=flow_run_id,
        on_release=lambda conn, ids: sla_store.close_timers(conn, ids, now),
    )
    return decide.reassigned_breaches(late, done.moved, now, flow_run_id), done.messages
