"""The nurture hop, declared on the shared runner: enrol, touch, defer, exit, finish.

A tick at ``now`` first does two set-based steps (``prepare_tick``): enrolments of leads that
left ``nurturing`` end (became MQL, disqualified, ...), and enrolments that follow an older
version of ``rules/cadences.yaml`` are kept or re-planned per ``on_change``. Then the hop runs
over the candidates (leads with a touch due, and nurturing leads in no cadence) with
``LOCKED_IDS`` claims, so two overlapping ticks never work the same lead. Per batch:

- ``fetch`` reads, inside the claim's transaction, the leads' enrolments (all of them: the
  history decides re-entry), their touches of the last 7 days and the engagement that ends
  or suppresses a cadence;
- ``plan_batch`` (pure) enrols leads whose entry holds, then for every due enrolment, in
  this order: ends it if its cadence was removed or its steps ran out; checks its exits;
  suppresses (unsubscribed, bounced, do-not-email, the suppression list, no address); defers
  it out of quiet hours and weekends in the lead's time zone, then past the frequency cap
  (deferred, never dropped); renders the touch (a template error leaves it due, with the
  error, for the next tick); and queues it, advancing the enrolment, or finishing the cadence
  per ``on_finish``;
- the runner gates the batch with ``suites/nurtured.yaml`` and writes, in one transaction,
  the enrolments, the touches (unique per (enrolment, step)), the outbox messages (key
  ``touch:<lead>:<cadence>:<entry>:<step>``), ledger notes, and any lead disqualified by a
  finished cadence.

Messages are sent by the outbox sender after the hop: a rerun, a retry or an overlapping run
never queues a step twice, and SMTP being down leaves them queued, not lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import Connection, exists, select, union

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.nurture import unsubscribe
from leadflow.nurture.rules import (
    EXIT_EVENTS,
    Cadence,
    CadenceRules,
    Templates,
    load_rules,
    load_suppression,
)
from leadflow.outbox import store as outbox
from leadflow.queue import Strategy
from leadflow.rules.conditions import condition_mask
from leadflow.runner import Hop, HopResult

log = logging.getLogger(__name__)

ACTOR = "nurture"
WEEK = timedelta(days=7)
ACTIVE, COMPLETED, EXITED = "active", "completed", "exited"
# Lead statuses that mean "left nurture for sales" (the became_mql exit).
TO_SALES = {Status.MQL, Status.ROUTED, Status.ACCEPTED, Status.QUALIFIED, Status.WON}
DETAIL_COLUMNS = (
    "id",
    "status",
    "email",
    "first_name",
    "last_name",
    "company",
    "title",
    "phone",
    "country",
    "website",
    "source",
    "domain",
    "industry",
    "employees",
    "revenue",
    "seniority",
    "department",
    "region",
    "timezone",
    "score",
    "temperature",
    "recycle_count",
    "attributes",
)
ENROLMENT_COLUMNS = (
    "id",
    "lead_id",
    "cadence",
    "version",
    "entry_no",
    "step",
    "status",
    "due_at",
    "enrolled_at",
    "last_touch_at",
    "deferrals",
    "last_error",
    "ended_at",
    "end_reason",
)


@dataclass(frozen=True)
class NurtureContext:
    rules: CadenceRules
    version: str
    templates: Templates
    emails: frozenset[str]  # the suppression list
    domains: frozenset[str]
    secret: bytes  # unsubscribe tokens
    public_url: str


@dataclass
class NurtureInputs:
    """What the hop reads besides the leads, in the claim's transaction."""

    enrolments: pd.DataFrame  # ENROLMENT_COLUMNS, every enrolment of the batch's leads
    recent: pd.DataFrame  # lead_id, decided_at: touches queued in the last 7 days
    signals: pd.DataFrame  # lead_id, kind (event type), last: latest time of each kind


def load_context(spec: str | None = None) -> NurtureContext:
    """Cadences from a path (default ``rules/cadences.yaml``), their templates and the
    suppression list (relative to the rules file)."""
    from pathlib import Path

    from leadflow.settings import get_settings

    path = Path(spec) if spec else get_settings().rules_dir / "cadences.yaml"
    rules, version, templates = load_rules(path)
    listed = rules.suppression_list
    emails, domains = load_suppression(path.parent / listed if listed else None)
    return NurtureContext(
        rules,
        version,
        templates,
        emails,
        domains,
        unsubscribe.secret(),
        unsubscribe.public_url(),
    )


# --------------------------------------------------------------------------- time windows


def next_window(now: datetime, zone: str, rules: CadenceRules) -> datetime:
    """The first instant at or after ``now`` when a touch may go out in ``zone``: outside
    quiet hours and, unless ``weekends``, not on Saturday or Sunday (local time)."""
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    for _ in range(10):
        allowed_day = rules.weekends or local.weekday() < 5
        quiet = False
        wake = local
        if rules.quiet_hours is not None:
            start, end = rules.quiet_hours.bounds()
            clock = local.time().replace(tzinfo=None)
            if start > end:  # overnight: quiet from start to midnight and midnight to end
                quiet = clock >= start or clock < end
                if clock >= start:
                    wake = datetime.combine(local.date() + timedelta(days=1), end, tzinfo=tz)
                elif clock < end:
                    wake = datetime.combine(local.date(), end, tzinfo=tz)
            elif start < end:
                quiet = start <= clock < end
                wake = datetime.combine(local.date(), end, tzinfo=tz)
        if allowed_day and not quiet:
            return local.astimezone(UTC)
        if not allowed_day:
            morning = rules.quiet_hours.bounds()[1] if rules.quiet_hours else local.time()
            if rules.quiet_hours and rules.quiet_hours.bounds()[0] < morning:
                morning = datetime.min.time()  # daytime quiet hours: the day starts at 00:00
            local = datetime.combine(local.date() + timedelta(days=1), morning, tzinfo=tz)
            # the next day's wall clock, normalised through UTC (DST)
            local = local.astimezone(UTC).astimezone(tz)
            continue
        local = wake.astimezone(UTC).astimezone(tz)
    return local.astimezone(UTC)


def windows(zones: pd.Series, now: datetime, rules: CadenceRules) -> pd.Series:
    """``next_window`` for every lead's zone (computed once per distinct zone)."""
    known = {zone: next_window(now, zone, rules) for zone in zones.dropna().unique()}
    return zones.map(known)


def lead_zones(leads: pd.DataFrame, rules: CadenceRules) -> pd.Series:
    """Each lead's time zone: enrichment's, else the file's default (a bad name too)."""
    from leadflow.rules.units import check_time_zone

    def usable(zone: Any) -> str:
        if not isinstance(zone, str) or not zone:
            return rules.default_timezone
        try:
            return check_time_zone(zone)
        except ValueError:
            return rules.default_timezone

    zones = leads["timezone"] if "timezone" in leads.columns else pd.Series(None, index=leads.index)
    distinct = {z: usable(z) for z in zones.astype(object).where(zones.notna(), None).unique()}
    return zones.astype(object).where(zones.notna(), None).map(distinct)


# --------------------------------------------------------------------------- suppression


def _truthy(values: pd.Series) -> np.ndarray:
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip().str.lower()
    return text.isin({"true", "yes", "y", "1", "t"}).to_numpy()


def suppression(leads: pd.DataFrame, signals: pd.DataFrame, context: NurtureContext) -> pd.Series:
    """Per lead, why it must never be contacted (None: it may be): unsubscribed, bounced,
    do-not-email, on the suppression list (address or domain)."""
    reason = pd.Series(None, index=leads.index, dtype=object)
    email = leads["email"].astype(object).where(leads["email"].notna(), "").astype(str).str.lower()
    domain = email.str.rpartition("@")[2]
    listed = email.isin(context.emails) | domain.isin(context.domains)
    reason[listed.to_numpy()] = "on the suppression list"
    field = context.rules.do_not_email_field
    if field in leads.columns:
        reason[_truthy(leads[field]) & reason.isna().to_numpy()] = "do not email"
    for kind, why in (("bounce", "bounced"), ("unsubscribe", "unsubscribed")):
        hit = set(signals.loc[signals["kind"] == kind, "lead_id"].astype("int64"))
        reason[leads["id"].astype("int64").isin(hit).to_numpy()] = why
    return reason


# --------------------------------------------------------------------------- the plan (pure)


def _key(lead: int, cadence: str, entry: int, step: int) -> str:
    return f"touch:{lead}:{cadence}:{entry}:{step}"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``frame.to_dict("records")`` with missing values as None, several times faster (one
    ``tolist`` per column instead of boxing every cell through pandas)."""
    columns = list(frame.columns)
    values = [frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in columns]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def _values(lead: dict[str, Any], context: NurtureContext) -> dict[str, Any]:
    """A lead's template variables: its fields (missing values already None), ``attributes``
    as a dict, ``lead_id`` and ``unsubscribe_url``."""
    values = {name: value for name, value in lead.items() if not name.startswith("attributes.")}
    attributes = store.json_value(values.get("attributes"))
    values["attributes"] = attributes if isinstance(attributes, dict) else {}
    values["lead_id"] = lead_id = int(lead["id"])
    values["unsubscribe_url"] = (
        f"{context.public_url}/unsubscribe?lead={lead_id}&t="
        + unsubscribe.token(lead_id, context.secret)
    )
    for number in ("score", "employees", "revenue"):
        if isinstance(values.get(number), float) and float(values[number]).is_integer():
            values[number] = int(values[number])
    return values


def render(step: Any, values: dict[str, Any], templates: Templates) -> tuple[str, str]:
    """(subject, body) of a step for one lead; raises the template's error."""
    body = templates.render(templates.file(step.template), values)
    subject = templates.render(templates.string(step.subject), values) if step.subject else ""
    return " ".join(subject.split()), body


def _enrol(
    leads: pd.DataFrame,
    suppressed: pd.Series,
    history: pd.DataFrame,
    context: NurtureContext,
    now: datetime,
) -> pd.DataFrame:
    """New enrolments: leads whose entry criteria hold, not suppressed, not already active in
    the cadence, and allowed back in (``reentry``, ``reentry_after``)."""
    rows = []
    eligible = leads[(leads["status"] == Status.NURTURING.value) & suppressed.isna().to_numpy()]
    if eligible.empty:
        return pd.DataFrame(columns=list(ENROLMENT_COLUMNS))
    for cadence in context.rules.cadences:
        if cadence.entry is None:
            continue
        hits = eligible[condition_mask(cadence.entry, eligible)]
        if hits.empty:
            continue
        past = history[history["cadence"] == cadence.name]
        active = set(past.loc[past["status"] == ACTIVE, "lead_id"].astype("int64"))
        ended = past[past["status"] != ACTIVE].sort_values("entry_no")
        last = ended.groupby("lead_id").tail(1).set_index("lead_id")
        entries = past.groupby("lead_id")["entry_no"].max()
        for lead_id in hits["id"].astype("int64"):
            if lead_id in active:
                continue
            step = 1
            if lead_id in last.index:
                previous = last.loc[lead_id]
                if cadence.reentry == "never":
                    continue
                if now - previous["ended_at"] < timedelta(minutes=cadence.reentry_minutes):
                    continue
                if cadence.reentry == "resume" and int(previous["step"]) <= len(cadence.steps):
                    step = int(previous["step"])
            rows.append(
                _new_enrolment(
                    lead_id, cadence, int(entries.get(lead_id, 0)) + 1, step, context, now
                )
            )
    return pd.DataFrame(rows, columns=list(ENROLMENT_COLUMNS))


def _new_enrolment(
    lead_id: int, cadence: Cadence, entry_no: int, step: int, context: NurtureContext, now: datetime
) -> dict[str, Any]:
    return {
        "id": pd.NA,
        "lead_id": int(lead_id),
        "cadence": cadence.name,
        "version": context.version,
        "entry_no": entry_no,
        "step": step,
        "status": ACTIVE,
        "due_at": pd.Timestamp(now + timedelta(minutes=cadence.steps[step - 1].minutes)),
        "enrolled_at": pd.Timestamp(now),
        "last_touch_at": pd.NaT,
        "deferrals": 0,
        "last_error": None,
        "ended_at": pd.NaT,
        "end_reason": None,
    }


@dataclass
class Plan:
    """What ``plan_batch`` decided, before the gate."""

    enrolments: pd.DataFrame  # every enrolment that changed or is new (``id`` NA: new)
    touches: pd.DataFrame  # cadence_touches rows (``enrolment_id`` NA: a new enrolment's)
    messages: pd.DataFrame  # outbox rows
    notes: pd.DataFrame  # ledger notes: lead_id, reason
    disqualify: list[int]  # leads whose last cadence ends in disqualified
    checked: pd.DataFrame  # the gate's frame, one row per lead with a decision
    stats: dict[str, int]
    errors: list[str]  # template errors, one line each (no personal data)
    finished: list[tuple[int, str]]  # (lead, cadence) that finished: Prefect events


SUPPRESSING = ("unsubscribed", "bounced")
COUNTERS = (
    "queued",
    "suppressed",
    "exited",
    "finished",
    "deferred_quiet",
    "deferred_cap",
    "template_failed",
)


def quiet_now(zones: pd.Series, now: datetime, rules: CadenceRules) -> pd.Series:
    """Whether it is quiet time or a day off for each zone at ``now`` (the gate's own check,
    written apart from ``next_window``)."""

    def quiet(zone: str) -> bool:
        local = now.astimezone(ZoneInfo(zone))
        if not rules.weekends and local.weekday() >= 5:
            return True
        if rules.quiet_hours is None:
            return False
        start, end = rules.quiet_hours.bounds()
        clock = local.time().replace(tzinfo=None)
        return (clock >= start or clock < end) if start > end else (start <= clock < end)

    known = {zone: quiet(zone) for zone in zones.dropna().unique()}
    return zones.map(known).fillna(False).astype(bool)


def plan_batch(
    leads: pd.DataFrame, inputs: NurtureInputs, context: NurtureContext, now: datetime
) -> Plan:
    """The hop's decisions for a batch of nurturing leads (pure)."""
    rules = context.rules
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    stamp = pd.Timestamp(now)
    leads = leads.reset_index(drop=True)
    lead_ids = leads["id"].astype("int64")
    history = inputs.enrolments
    suppressed = suppression(leads, inputs.signals, context)
    fresh = _enrol(leads, suppressed, history, context, now)
    reasons = {
        int(i): (r if isinstance(r, str) else None)
        for i, r in zip(lead_ids, suppressed, strict=True)
    }
    zones = pd.Series(lead_zones(leads, rules).to_numpy(), index=lead_ids.to_numpy())
    window = windows(zones, now, rules).to_dict()
    last_signal = {
        (int(lead), kind): last
        for lead, kind, last in zip(
            inputs.signals["lead_id"], inputs.signals["kind"], inputs.signals["last"], strict=True
        )
    }
    recent = inputs.recent
    in_window = recent[recent["decided_at"] > stamp - WEEK]
    sent_before = in_window.groupby(in_window["lead_id"].astype("int64")).size().to_dict()
    oldest = in_window.groupby(in_window["lead_id"].astype("int64"))["decided_at"].min().to_dict()
    entries: dict[tuple[int, str], int] = {
        (int(lead), cadence): int(n)
        for (lead, cadence), n in history.groupby(["lead_id", "cadence"])["entry_no"].max().items()
    }
    cap = rules.max_touches_per_week
    delays = {
        (cadence.name, number): timedelta(minutes=step.minutes)
        for cadence in rules.cadences
        for number, step in enumerate(cadence.steps, start=1)
    }

    records = _records(history[history["status"] == ACTIVE]) + _records(fresh)
    for record in records:
        record["new"] = pd.isna(record["id"])
        record["changed"] = record["new"]
        entries[(record["lead_id"], record["cadence"])] = max(
            entries.get((record["lead_id"], record["cadence"]), 0), int(record["entry_no"])
        )
    active_in = {(r["lead_id"], r["cadence"]) for r in records}
    lead_rows: dict[int, dict[str, Any]] | None = None
    counters = dict.fromkeys(COUNTERS, 0)
    touches: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    notes: list[tuple[int, str]] = []
    errors: list[str] = []
    finished: list[tuple[int, str]] = []
    disqualify: list[int] = []
    follow_ups: list[dict[str, Any]] = []
    queued_now: dict[int, int] = {}
    touched: set[int] = set(fresh["lead_id"].astype("int64"))

    def end(record: dict[str, Any], status: str, reason: str) -> None:
        record.update(status=status, end_reason=reason, ended_at=stamp, due_at=pd.NaT)
        record["changed"] = True

    def finish(record: dict[str, Any], cadence: Cadence) -> None:
        """The last step went out (or the steps ran out): the cadence says what is next."""
        end(record, COMPLETED, "finished")
        counters["finished"] += 1
        lead_id = int(record["lead_id"])
        finished.append((lead_id, cadence.name))
        then = cadence.on_finish
        if then.then == "disqualify":
            disqualify.append(lead_id)
            notes.append((lead_id, f"finished {cadence.name}: disqualified per on_finish"))
            return
        target = rules.cadence(then.cadence or "")
        assert target is not None  # checked at load
        notes.append((lead_id, f"finished {cadence.name}: on to {target.name}"))
        if (lead_id, target.name) in active_in:
            return
        entry = entries.get((lead_id, target.name), 0) + 1
        entries[(lead_id, target.name)] = entry
        active_in.add((lead_id, target.name))
        follow_ups.append(
            _new_enrolment(lead_id, target, entry, 1, context, now) | {"new": True, "changed": True}
        )

    due = sorted(
        (r for r in records if pd.notna(r["due_at"]) and r["due_at"] <= stamp),
        key=lambda r: (r["lead_id"], r["due_at"], r["cadence"]),
    )
    if due:
        wanted = lead_ids.isin({int(r["lead_id"]) for r in due}).to_numpy()
        lead_rows = {int(r["id"]): r for r in _records(leads[wanted])}
    for record in due:
        lead_id = int(record["lead_id"])
        touched.add(lead_id)
        cadence = rules.cadence(record["cadence"])
        if cadence is None:
            end(record, EXITED, f"cadence {record['cadence']} removed from the rules")
            counters["exited"] += 1
            notes.append((lead_id, f"left {record['cadence']}: cadence removed"))
            continue
        number = int(record["step"])
        if number > len(cadence.steps):
            finish(record, cadence)
            continue
        exit_reason = None
        for reason in cadence.exit:
            if reason in SUPPRESSING:
                continue  # suppression below, for every cadence
            kinds = {"meeting_booked": ("meeting_booked", "meeting")}.get(
                reason, (EXIT_EVENTS.get(reason),)
            )
            for kind in kinds:
                last = last_signal.get((lead_id, kind)) if kind else None
                if last is not None and last >= record["enrolled_at"]:
                    exit_reason = reason
            if exit_reason:
                break
        if exit_reason is not None:
            end(record, EXITED, exit_reason)
            counters["exited"] += 1
            notes.append((lead_id, f"left {cadence.name}: {exit_reason}"))
            continue
        step = cadence.steps[number - 1]
        lead = lead_rows[lead_id]
        why = reasons.get(lead_id)
        if why is None and step.channel == "email" and not isinstance(lead.get("email"), str):
            why = "no email address"
        if why is not None:
            touches.append(_touch(record, cadence, step, "suppressed", why, None, context, stamp))
            end(record, EXITED, f"suppressed: {why}")
            counters["suppressed"] += 1
            notes.append((lead_id, f"left {cadence.name}: suppressed ({why})"))
            continue
        opens = window[lead_id]
        if opens > now:
            record.update(due_at=pd.Timestamp(opens), deferrals=int(record["deferrals"]) + 1)
            record["changed"] = True
            counters["deferred_quiet"] += 1
            continue
        if sent_before.get(lead_id, 0) + queued_now.get(lead_id, 0) >= cap:
            record.update(
                due_at=oldest.get(lead_id, stamp) + WEEK, deferrals=int(record["deferrals"]) + 1
            )
            record["changed"] = True
            counters["deferred_cap"] += 1
            continue
        values = _values(lead | {"id": lead_id}, context) | {
            "cadence": cadence.name,
            "step": step.name,
        }
        try:
            subject, body = render(step, values, context.templates)
        except Exception as exc:  # a template error: the touch waits for a fixed template
            error = (
                f"{cadence.name} step {number} ({step.name}): template {step.template}: "
                f"{type(exc).__name__}: {exc}"
            )
            record.update(last_error=error[:1000], changed=True)
            counters["template_failed"] += 1
            errors.append(error)
            continue
        key = _key(lead_id, cadence.name, int(record["entry_no"]), number)
        messages.append(_message(key, step, lead_id, values, subject, body))
        touches.append(_touch(record, cadence, step, "queued", None, key, context, stamp))
        queued_now[lead_id] = queued_now.get(lead_id, 0) + 1
        counters["queued"] += 1
        record.update(last_touch_at=stamp, last_error=None, step=number + 1, changed=True)
        if number + 1 > len(cadence.steps):
            finish(record, cadence)
        else:
            record["due_at"] = now + delays[(cadence.name, number + 1)]
    touched |= set(disqualify)
    changed = [r for r in records + follow_ups if r["changed"]]
    enrolments = pd.DataFrame(changed, columns=[*ENROLMENT_COLUMNS, "new"])
    touch_frame = pd.DataFrame(touches, columns=TOUCH_COLUMNS)
    note_frame = pd.DataFrame(
        [
            (int(i), f"enrolled in {c}")
            for i, c in zip(fresh["lead_id"], fresh["cadence"], strict=True)
        ]
        + notes,
        columns=["lead_id", "reason"],
    )
    stats = {"enrolled": len(fresh) + len(follow_ups), "enrolled_next": len(follow_ups), **counters}
    return Plan(
        enrolments=enrolments,
        touches=touch_frame,
        messages=pd.DataFrame(messages, columns=list(outbox.MESSAGE_COLUMNS)[:9]),
        notes=note_frame,
        disqualify=sorted(set(disqualify)),
        checked=gate_frame(sorted(touched), touch_frame, reasons, zones, sent_before, now, rules),
        stats=stats,
        errors=errors,
        finished=finished,
    )


def gate_frame(
    lead_ids: list[int],
    touches: pd.DataFrame,
    reasons: dict[int, str | None],
    zones: pd.Series,
    sent_before: dict[int, int],
    now: datetime,
    rules: CadenceRules,
) -> pd.DataFrame:
    """One row per lead the batch decided something for: what ``suites/nurtured.yaml``
    checks, recomputed from the touches themselves (not from the planner's branches)."""
    frame = pd.DataFrame({"id": pd.Series(lead_ids, dtype="int64")})
    queued = touches[touches["status"] == "queued"]
    per_lead = queued.groupby(queued["lead_id"].astype("int64")).size()
    frame["touches_queued"] = frame["id"].map(per_lead).fillna(0).astype(int)
    frame["touches_in_week"] = frame["touches_queued"] + frame["id"].map(sent_before).fillna(
        0
    ).astype(int)
    frame["within_cap"] = frame["touches_in_week"] <= rules.max_touches_per_week
    sent = frame["touches_queued"] > 0
    frame["contacted_while_suppressed"] = sent & frame["id"].map(reasons).notna()
    frame["queued_in_quiet_hours"] = sent & frame["id"].map(quiet_now(zones, now, rules)).fillna(
        False
    ).astype(bool)
    return frame


TOUCH_COLUMNS = [
    "enrolment_id",
    "lead_id",
    "cadence",
    "entry_no",
    "step",
    "step_name",
    "channel",
    "status",
    "reason",
    "outbox_key",
    "version",
    "due_at",
    "decided_at",
    "flow_run_id",
]


def _touch(
    record: dict[str, Any],
    cadence: Cadence,
    step: Any,
    status: str,
    reason: str | None,
    key: str | None,
    context: NurtureContext,
    stamp: pd.Timestamp,
) -> dict[str, Any]:
    return {
        "enrolment_id": record["id"],
        "lead_id": int(record["lead_id"]),
        "cadence": cadence.name,
        "entry_no": int(record["entry_no"]),
        "step": int(record["step"]),
        "step_name": step.name,
        "channel": step.channel,
        "status": status,
        "reason": reason,
        "outbox_key": key,
        "version": context.version,
        "due_at": record["due_at"],
        "decided_at": stamp,
        "flow_run_id": None,
    }


def _message(
    key: str, step: Any, lead_id: int, values: dict[str, Any], subject: str, body: str
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "lead_id": lead_id,
        "cadence": values["cadence"],
        "step": step.name,
        "audience": "rep" if step.channel == "rep_task" else "lead",
    }
    if step.channel == "email":
        recipient = values["email"]
        payload["headers"] = unsubscribe.headers(values["unsubscribe_url"])
        channel = "email"
    elif step.channel == "rep_task":
        recipient = step.assignee
        channel = "email"
    else:
        recipient = step.url or "webhook"
        channel = "webhook"
        fields = ("first_name", "last_name", "company", "title", "country", "score", "temperature")
        payload |= {
            "event": "leadflow.nurture.touch",
            "lead": {name: values.get(name) for name in fields} | {"email": values.get("email")},
            "subject": subject,
            "text": body,
        }
    return {
        "idempotency_key": key,
        "kind": "nurture_touch",
        "channel": channel,
        "recipient": recipient,
        "lead_id": lead_id,
        "subject": subject,
        "body": body,
        "payload": payload,
        "attachments": None,
    }


# --------------------------------------------------------------------------- the hop


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


def nurture_batch(
    leads: pd.DataFrame, inputs: NurtureInputs, context: NurtureContext, now: datetime
) -> HopResult:
    """The runner's transform: ``plan_batch``, with the leads it decided for as changes
    (status kept, or disqualified by a cadence's ``on_finish``)."""
    plan = plan_batch(leads, inputs, context, now)
    # Only the leads that move: the others keep their row untouched (the runner still
    # quarantines any lead the gate holds).
    changes = pd.DataFrame(
        {
            "id": pd.Series(plan.disqualify, dtype="int64"),
            "from_status": Status.NURTURING.value,
            "to_status": Status.DISQUALIFIED.value,
            "reason": "nurture: cadence finished without engagement",
        }
    )
    return HopResult(
        changes=changes,
        checked=plan.checked,
        stats=dict(plan.stats),
        report={"plan": plan, "now": now},
    )


# --------------------------------------------------------------------------- tick steps


def departed_reason(status: str) -> str:
    if status in TO_SALES:
        return "became_mql"
    if status == Status.DISQUALIFIED:
        return "disqualified"
    return f"left nurture: {status}"


def summarise(run: Any, prepared: dict[str, int], sent: dict[str, Any] | None) -> dict[str, Any]:
    stats = run.stats
    summary: dict[str, Any] = {name: int(stats.get(name, 0)) for name in ("enrolled", *COUNTERS)}
    summary["deferred"] = summary["deferred_quiet"] + summary["deferred_cap"]
    summary["disqualified"] = int(run.moved.get(Status.DISQUALIFIED.value, 0))
    summary["quarantined"] = run.quarantined
    summary["batches"] = run.batches
    summary["messages_new"] = int(stats.get("messages_new", 0))
    summary |= prepared
    summary["notifications"] = sent or {}
    return summary


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
    stamp = pd.Timestamp(now)
    table = t.cadence_enrolments
    new = enrolments[enrolments["new"].astype(bool)].drop(columns=["new"]).copy()
    if len(new):
        new["id"] = store.allocate_ids(conn, table, len(new))
        new["updated_at"] = stamp
        store.bulk_insert(conn, table, new)
        ids = dict(
            zip(
                zip(
                    new["lead_id"].astype("int64"),
                    new["cadence"],
                    new["entry_no"].astype("int64"),
                    strict=True,
                ),
                new["id"],
                strict=True,
            )
        )
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
    old = enrolments[~enrolments["new"].astype(bool)]
    if len(old):
        update = old[
            ["id", "step", "status", "due_at", "last_touch_at", "deferrals", "last_error",
             "ended_at", "end_reason"]
        ].copy()  # fmt: skip
        update["id"] = update["id"].astype("int64")
        update["version"] = context.version
        update["updated_at"] = stamp
        store.update_from_frame(conn, table, update)
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


def prepare_tick(database_url: str, context: NurtureContext, now: datetime) -> dict[str, int]:
    """Before the hop, set-based: end the enrolments of leads that left ``nurturing``, and
    bring enrolments that follow an older version of the cadences to this one per
    ``on_change`` (``keep``: step and due time stay; ``replan``: due = previous touch (or
    enrolment) + the new step's delay). Returns counts."""
    e, leads = t.cadence_enrolments, t.leads
    stamp = pd.Timestamp(now)
    with store.get_engine(database_url).begin() as conn:
        store.serialize_writers(conn, "leadflow.nurture.prepare")
        gone = store.read_frame(
            conn,
            select(e.c.id, e.c.lead_id, e.c.cadence, leads.c.status)
            .join(leads, leads.c.id == e.c.lead_id)
            .where(e.c.status == ACTIVE, leads.c.status != Status.NURTURING.value),
        )
        if len(gone):
            gone["end_reason"] = gone["status"].map(departed_reason)
            store.update_from_frame(
                conn,
                e,
                pd.DataFrame(
                    {
                        "id": gone["id"].astype("int64"),
                        "status": EXITED,
                        "end_reason": gone["end_reason"],
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
                reasons="left " + gone["cadence"] + ": " + gone["end_reason"],
                actor=ACTOR,
                at=now,
            )
        stale = store.read_frame(
            conn,
            select(
                e.c.id, e.c.cadence, e.c.step, e.c.due_at, e.c.enrolled_at, e.c.last_touch_at
            ).where(e.c.status == ACTIVE, e.c.version != context.version),
        )
        replanned = 0
        if len(stale):
            due = pd.to_datetime(stale["due_at"], utc=True)
            if context.rules.on_change == "replan":
                since = pd.to_datetime(stale["last_touch_at"], utc=True).fillna(
                    pd.to_datetime(stale["enrolled_at"], utc=True)
                )
                for position, (cadence_name, step) in enumerate(
                    zip(stale["cadence"], stale["step"], strict=True)
                ):
                    cadence = context.rules.cadence(cadence_name)
                    if cadence is None or int(step) > len(cadence.steps):
                        due.iloc[position] = stamp  # ends at once, per the rules, in the hop
                    else:
                        due.iloc[position] = since.iloc[position] + timedelta(
                            minutes=cadence.steps[int(step) - 1].minutes
                        )
                        replanned += 1
            else:
                for position, (cadence_name, step) in enumerate(
                    zip(stale["cadence"], stale["step"], strict=True)
                ):
                    cadence = context.rules.cadence(cadence_name)
                    if cadence is None or int(step) > len(cadence.steps):
                        due.iloc[position] = min(due.iloc[position], stamp)
            store.update_from_frame(
                conn,
                e,
                pd.DataFrame(
                    {
                        "id": stale["id"].astype("int64"),
                        "version": context.version,
                        "due_at": due,
                        "updated_at": stamp,
                    }
                ),
            )
    return {"left_nurture": len(gone), "version_moved": len(stale), "replanned": replanned}


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


HOP = Hop(
    name="nurture",
    inputs=(Status.NURTURING,),
    suite="nurtured",
    # Candidates (due touches, leads in no cadence) are sparse: row locks on just those.
    strategy=Strategy.LOCKED_IDS,
    columns=lead_columns,
    fetch=fetch_state,
    transform=nurture_batch,
    persist=persist_plan,
)
