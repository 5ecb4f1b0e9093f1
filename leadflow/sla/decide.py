"""The SLA check's decisions, pure: DataFrames in and out, no database, no Prefect.

``leadflow/sla/check.py`` and ``leadflow/sla/escalate.py`` read their frames through
``leadflow/sla/store.py``, decide here, and write what comes back:

- **start** (``timers_to_start``): which policies a new assignment (or acceptance) gets, each
  timer's start, and its warning, due and escalation instants, computed once in the owner's
  business time: every later step only compares stored instants;
- **meet** (``business_minutes``, ``met_updates``, ``met_late``): the timers the earliest
  genuine activity met, how many business minutes it took, and the level-1 ``met_late``
  breach of those met after their due time;
- **escalate**: the warning, level-1 and level-2 messages and reasons, which level-2 timers
  reassign their lead (``reassigning``), what routing is asked for (``reassign_requests``)
  and the breach rows of what it did (``reassigned_breaches``).

Instants are ``datetime64[us]`` UTC inside the business-time arithmetic and tz-aware pandas
timestamps in the frames.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from leadflow.business_time import Timeline, WorkingCalendar
from leadflow.lifecycle import Status
from leadflow.outbox.store import MESSAGE_COLUMNS
from leadflow.routing.rules import Rep
from leadflow.rules.conditions import condition_mask
from leadflow.sla.rules import Policy, SlaRules

BREACH_COLUMNS = (
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
)
TIMER_COLUMNS = (
    "lead_id",
    "assignment_id",
    "rep_id",
    "policy",
    "started_at",
    "warn_at",
    "due_at",
    "escalate_at",
    "level",
    "created_at",
)
STAGES = ("assigned", "accepted")  # what starts a policy's clock (``Policy.start``)


# --------------------------------------------------------------------------- frames


def empty_breaches() -> pd.DataFrame:
    return pd.DataFrame(columns=list(BREACH_COLUMNS))


def no_messages() -> pd.DataFrame:
    return pd.DataFrame(columns=list(MESSAGE_COLUMNS))


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
    """One ``sla_breaches`` row per timer (``id``, ``lead_id``, ``rep_id``, ``policy``,
    ``due_at``), at ``level`` with ``action`` (one, or one per timer) and its reason."""
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


def within(frame: pd.DataFrame, held: frozenset[int] | None) -> pd.DataFrame:
    """The rows of ``frame`` (by ``lead_id``) whose lead the check holds locked (``None``:
    all of them)."""
    if held is None or frame.empty:
        return frame
    return frame[frame["lead_id"].astype("int64").isin(held)].reset_index(drop=True)


# --------------------------------------------------------------------------- business time


def as64(values: pd.Series) -> np.ndarray:
    """Instants as naive UTC ``datetime64[us]`` (what ``Timeline`` computes with)."""
    return pd.to_datetime(values, utc=True).dt.tz_localize(None).to_numpy().astype("datetime64[us]")


def timeline(
    cache: dict[int, Timeline], calendars_: dict[int, WorkingCalendar], rep_id: int, starts: Any
) -> Timeline:
    """The rep's working time from their earliest start on (a week, growing as needed), built
    once per step and rep."""
    if rep_id not in cache:
        first = pd.Timestamp(np.min(starts)).to_pydatetime().replace(tzinfo=UTC)
        cache[rep_id] = Timeline(calendars_[rep_id], first, first + pd.Timedelta(days=7))
    return cache[rep_id]


def deadlines(
    frame: pd.DataFrame,
    policy: Policy,
    rules: SlaRules,
    calendars_: dict[int, WorkingCalendar],
    now: datetime,
) -> pd.DataFrame:
    """``TIMER_COLUMNS`` for ``policy`` on each row of ``frame`` (``lead_id``,
    ``assignment_id``, ``rep_id``, ``started_at``): warned after ``warn_at`` of the allowed
    business time, due after all of it, escalated ``escalate_after`` from the start (none
    without it), each in the row's rep's calendar.

    Example: ``within: 15m``, ``escalate_after: 1h``, ``warn_at: 0.8``, a rep working 09:00-17:00
    in New York, started Friday 16:55 local (21:55 UTC): 12 minutes of work is Monday 09:07,
    so ``warn_at`` is Monday 14:07 UTC, ``due_at`` Monday 14:10 UTC and ``escalate_at``
    Monday 14:55 UTC (5 minutes on Friday, the rest on Monday).
    """
    allowed, escalate = rules.minutes(policy)
    starts = as64(frame["started_at"])
    warn = np.empty(len(frame), dtype="datetime64[us]")
    due = np.empty(len(frame), dtype="datetime64[us]")
    late = np.full(len(frame), np.datetime64("NaT"), dtype="datetime64[us]")
    cache: dict[int, Timeline] = {}
    reps = frame["rep_id"].astype("int64").to_numpy()
    for rep_id in np.unique(reps):
        mask = reps == rep_id
        line = timeline(cache, calendars_, int(rep_id), starts[mask])
        warn[mask] = line.add(starts[mask], allowed * rules.warn_at)
        due[mask] = line.add(starts[mask], allowed)
        if escalate is not None:
            late[mask] = line.add(starts[mask], escalate)
    return pd.DataFrame(
        {
            "lead_id": frame["lead_id"].astype("int64").to_numpy(),
            "assignment_id": frame["assignment_id"].astype("int64").to_numpy(),
            "rep_id": reps,
            "policy": policy.name,
            "started_at": pd.to_datetime(starts).tz_localize("UTC"),
            "warn_at": pd.to_datetime(warn).tz_localize("UTC"),
            "due_at": pd.to_datetime(due).tz_localize("UTC"),
            "escalate_at": pd.to_datetime(late).tz_localize("UTC"),
            "level": 0,
            "created_at": pd.Timestamp(now),
        }
    )


# --------------------------------------------------------------------------- start


def started_at(frame: pd.DataFrame, stage: str) -> pd.Series:
    """When the clocks of ``frame``'s assignments start: at assignment (``assigned``), or at
    the first ``accept`` activity since it (``accepted``; the status change when there is
    none)."""
    if stage == "accepted":
        return frame["accepted_at"].where(frame["accepted_at"].notna(), frame["status_changed_at"])
    return frame["assigned_at"]


def timers_to_start(
    fresh: pd.DataFrame,
    accepted: pd.DataFrame,
    rules: SlaRules,
    calendars_: dict[int, WorkingCalendar],
    now: datetime,
) -> pd.DataFrame:
    """The timers (``TIMER_COLUMNS``) to start: for each ``fresh`` assignment, one per
    ``start: assigned`` policy whose ``when`` selects the lead; for each ``accepted`` one, one
    per ``start: accepted`` policy likewise (frames as ``leadflow.sla.store.assignments_to_start``
    reads them), in the order of the policies.

    Example, with ``rules/sla.yaml``-like policies ``hot-first-touch`` (``when`` temperature
    hot, ``start: assigned``) and ``acceptance`` (every lead): a hot lead assigned at 15:00
    gets two timers started at 15:00, a warm one only ``acceptance``; the same leads in
    ``accepted`` start nothing here (no ``start: accepted`` policy).
    """
    rows = []
    for stage, frame in zip(STAGES, (fresh, accepted), strict=True):
        if frame.empty:
            continue
        frame = frame.assign(started_at=started_at(frame, stage))
        for policy in (p for p in rules.policies if p.start == stage):
            chosen = frame if policy.when is None else frame[condition_mask(policy.when, frame)]
            if len(chosen):
                rows.append(deadlines(chosen, policy, rules, calendars_, now))
    if not rows:
        return pd.DataFrame(columns=list(TIMER_COLUMNS))
    return pd.concat(rows, ignore_index=True)


# --------------------------------------------------------------------------- meet


def business_minutes(first: pd.DataFrame, calendars_: dict[int, WorkingCalendar]) -> np.ndarray:
    """Per row of ``first`` (a timer and the activity that met it: ``rep_id``, ``started_at``,
    ``occurred_at``), the rep's working minutes from the timer's start to the activity.

    Example: started Monday 15:00 UTC (10:00 New York), a call at 15:20 UTC: 20.0; a call at
    Tuesday 14:05 UTC for a rep working 09:00-17:00 New York: 7 hours Monday + 5 minutes
    Tuesday = 425.0."""
    minutes = np.zeros(len(first))
    cache: dict[int, Timeline] = {}
    reps = first["rep_id"].astype("int64").to_numpy()
    starts, ends = as64(first["started_at"]), as64(first["occurred_at"])
    for rep_id in np.unique(reps):
        mask = reps == rep_id
        line = timeline(cache, calendars_, int(rep_id), starts[mask])
        minutes[mask] = line.between(starts[mask], ends[mask])
    return minutes


def met_updates(first: pd.DataFrame, minutes: np.ndarray, now: datetime) -> pd.DataFrame:
    """The ``sla_timers`` update for the timers ``first`` met: met at and by the activity, its
    business minutes; a timer still open closes now as ``met`` (one closed before keeps its
    closing, only what met it is moved earlier)."""
    was_open = first["closed_at"].isna()
    return pd.DataFrame(
        {
            "id": first["id"].astype("int64").to_numpy(),
            "met_at": first["occurred_at"].to_numpy(),
            "met_by": first["activity_id"].astype("int64").to_numpy(),
            "business_minutes": minutes,
            "closed_at": first["closed_at"].where(~was_open, pd.Timestamp(now)).to_numpy(),
            "closed_reason": first["closed_reason"].where(~was_open, "met").to_numpy(),
        }
    )


def met_late(
    first: pd.DataFrame, minutes: np.ndarray, now: datetime, flow_run_id: str | None
) -> pd.DataFrame:
    """Level-1 ``met_late`` breach rows for the timers met after their due time and not
    breached yet (``level`` below 1): a timer already notified at level 1 is not breached
    twice.

    Example: due 15:15, met by a call at 15:20 (20 business minutes), level 0: one breach,
    reason "hot-first-touch: first activity call came after the due time (20 business
    minutes)"; met at 15:10: none."""
    late = first[(first["occurred_at"] > first["due_at"]) & (first["level"] < 1)]
    positions = np.flatnonzero(first.index.isin(late.index))
    return breach_rows(
        late,
        level=1,
        action="met_late",
        reasons=[
            f"{row.policy}: first activity {row.activity_type} came after the due time "
            f"({minutes[i]:.0f} business minutes)"
            for i, row in zip(positions, late.itertuples(), strict=True)
        ],
        now=now,
        flow_run_id=flow_run_id,
    )


# --------------------------------------------------------------------------- escalate


def who(row: Any) -> str:
    """How a message names the lead: ``Lee Smith (Buyer 7)``, ``lead 7 (no company)``."""
    name = " ".join(str(p) for p in (row.first_name, row.last_name) if isinstance(p, str))
    # a missing company reads NaN when other leads of the batch have one: a str or nothing
    company = row.company if isinstance(row.company, str) and row.company else "no company"
    return f"{name or 'lead ' + str(row.lead_id)} ({company})"


def manager_emails(reps: Iterable[Rep], stored: Iterable[tuple[Any, Any]]) -> dict[str, str]:
    """Manager field (a rep id or an email) -> the email to write to: the rules' reps' emails,
    then the stored reps' (``stored``: (code, email) pairs) for codes the rules lack; a
    manager that is no rep's code is taken as an email."""
    reps = list(reps)
    by_code = {rep.id: rep.email for rep in reps}
    for code, email in stored:
        if code:
            by_code.setdefault(code, email)
    return {rep.manager: by_code.get(rep.manager, rep.manager) for rep in reps if rep.manager}


def warning_messages(due: pd.DataFrame) -> pd.DataFrame:
    """One warning to the owner of each timer of ``due`` (key ``sla:<timer>:warning``)."""
    return pd.DataFrame(
        {
            "idempotency_key": [f"sla:{i}:warning" for i in due["id"]],
            "kind": "sla_escalation",
            "channel": "email",
            "recipient": due["rep_email"].to_numpy(),
            "lead_id": due["lead_id"].to_numpy(),
            "subject": [f"SLA warning: {row.policy} for {who(row)}" for row in due.itertuples()],
            "body": [
                f"{row.policy} is due at {row.due_at:%Y-%m-%d %H:%M} UTC for {who(row)}, "
                f"lead {row.lead_id}. Log your first activity before then."
                for row in due.itertuples()
            ],
        }
    )


def level_one_reasons(late: pd.DataFrame) -> list[str]:
    """Why each timer of ``late`` breached: its policy, due and start times and owner."""
    return [
        f"{row.policy}: no qualifying activity by {row.due_at:%Y-%m-%d %H:%M} UTC "
        f"(started {row.started_at:%Y-%m-%d %H:%M} UTC, owner {row.rep_code})"
        for row in late.itertuples()
    ]


def level_one_messages(
    late: pd.DataFrame, reasons: list[str], managers: dict[str, str]
) -> pd.DataFrame:
    """Per breached timer, one message to the owner (``sla:<timer>:1:owner``) and one to
    their manager when ``managers`` knows them (``sla:<timer>:1:manager``); nobody without
    an email is written to."""
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
                    "subject": f"SLA breached: {row.policy} for {who(row)}",
                    "body": f"{reason}. Lead {row.lead_id}.",
                }
            )
    return pd.DataFrame(messages, columns=list(MESSAGE_COLUMNS)[:7])


def reassigning(late: pd.DataFrame, rules: SlaRules) -> pd.Series:
    """Which level-2 timers reassign their lead: those of an ``escalate: reassign`` policy
    whose lead is still only ``routed`` (an accepted lead is not taken from its owner); the
    others alert the manager."""
    policies = {p.name: p for p in rules.policies}
    return late["policy"].map(lambda name: policies[name].escalate == "reassign") & (
        late["status"] == Status.ROUTED.value
    )


def alert_reasons(alert: pd.DataFrame) -> list[str]:
    return [
        f"{row.policy}: still no qualifying activity at the escalation time; manager alerted"
        for row in alert.itertuples()
    ]


def alert_messages(
    alert: pd.DataFrame, reasons: list[str], managers: dict[str, str]
) -> list[dict[str, Any]]:
    """One message to the manager of each timer of ``alert`` (``sla:<timer>:2:manager``),
    when ``managers`` knows them."""
    messages = []
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
                    "subject": f"SLA escalation: {row.policy} for {who(row)}",
                    "body": f"{reason}. Owner {row.rep_code}, lead {row.lead_id}.",
                }
            )
    return messages


def reassign_requests(late: pd.DataFrame) -> pd.DataFrame:
    """What routing is asked (``leadflow.routing.reassign.REQUEST_COLUMNS``), one row per lead
    of the timers ``late`` (the first timer of a lead speaks for it): release its assignment
    because the policy was breached by the owner; the owner's manager takes it if nobody is
    left.

    Example: timer of ``hot-first-touch`` owned by ann (manager olga), assignment 12, lead 7:
    ``(7, 12, "SLA hot-first-touch breached by ann", "olga", "sla: hot-first-touch level 2")``.
    """
    first = late.drop_duplicates("lead_id")
    return pd.DataFrame(
        {
            "lead_id": first["lead_id"].astype("int64").to_numpy(),
            "assignment_id": first["assignment_id"].astype("int64").to_numpy(),
            "because": [
                f"SLA {p} breached by {r}"
                for p, r in zip(first["policy"], first["rep_code"], strict=True)
            ],
            "manager": first["manager"].to_numpy(),
            "released_reason": [f"sla: {p} level 2" for p in first["policy"]],
        }
    )


def reassigned_breaches(
    late: pd.DataFrame, moved: pd.DataFrame, now: datetime, flow_run_id: str | None
) -> pd.DataFrame:
    """Level-2 breach rows for every timer of the leads routing moved (``moved``:
    ``leadflow.routing.reassign.MOVED_COLUMNS``): ``reassigned`` when the rules chose the new
    owner, ``to_manager`` when the manager or the fallback owner took it, with routing's
    reason and the new owner; ``new_rep_held_before`` flags a reassignment to someone who had
    held the lead (the gate refuses it)."""
    by_lead = moved.set_index("lead_id")
    escalating = late[late["lead_id"].isin(moved["lead_id"])]
    leads = [int(i) for i in escalating["lead_id"]]
    actions = ["reassigned" if by_lead.at[i, "rerouted"] else "to_manager" for i in leads]
    breaches = breach_rows(
        escalating,
        level=2,
        action=actions,
        reasons=[by_lead.at[i, "reason"] for i in leads],
        now=now,
        flow_run_id=flow_run_id,
        new_rep_ids=[by_lead.at[i, "rep_id"] for i in leads],
    )
    breaches["new_rep_held_before"] = [
        bool(by_lead.at[i, "held_before"]) and a == "reassigned"
        for i, a in zip(leads, actions, strict=True)
    ]
    return breaches
