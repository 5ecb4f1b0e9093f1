"""Nurture, the pure part: who enrols in which cadence, and what each due enrolment gets at
``now``: a touch, a deferral, an exit or the cadence's end. DataFrames in, a ``Plan`` out; no
database, no Prefect (``leadflow/nurture/store.py`` reads and writes, ``leadflow/nurture/hop.py``
declares the hop on the shared runner).

``plan_batch`` takes a batch of nurturing leads with what the store read for them in the
claim's transaction (``NurtureInputs``: every enrolment, the history deciding re-entry; the
touches of the last 7 days; the engagement that ends or suppresses a cadence) and reads in
named steps:

1. ``suppression``: who must never be contacted (unsubscribed, bounced, do-not-email, the
   suppression list);
2. ``_enrol``: leads whose entry holds, and who may come (back) in, get a new enrolment;
3. ``_lookups``: once per batch, vectorised: each lead's next sending window, its last
   signals, its touches of the week;
4. ``_open_enrolments``, ``_due``: the enrolments worked on, and those due at ``now``;
5. ``_Walk.decide``, per due enrolment, in this order: end it if its cadence was removed or
   its steps ran out; check its exits; suppress; defer it out of quiet hours and weekends in
   the lead's time zone, then past the frequency cap (deferred, never dropped); render the
   touch (a template error leaves it due, with the error, for the next tick); queue it,
   advancing the enrolment, or finishing the cadence per ``on_finish``;
6. ``_assemble``: the frames the store writes, and the gate's frame (``gate_frame``).

``departed_reason`` and ``moved_due`` are the pure halves of ``store.prepare_tick``.

The worked examples in the docstrings use the cadences of ``tests/helpers.py``: ``warm``
(steps ``hello`` at once, ``proof`` 2 days later, ``call-task`` for a rep 1 day later, then
on to ``later``), ``cold`` (one step, then disqualify), quiet hours 19:00-08:00 in the lead's
zone, no weekends, at most 5 touches a week; ``now`` is Monday 2026-11-02 10:00 UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from leadflow import store
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
from leadflow.rules.conditions import condition_mask

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
    from leadflow.settings import get_settings, rules_file

    path = rules_file(spec) if spec else get_settings().rules_dir / "cadences.yaml"
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


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path is not None else 0.0
    except OSError:
        return 0.0


# cadences.yaml path -> (its mtime, the suppression list, the list's mtime, the context)
_SUPPRESSION: dict[str, tuple[float, Path | None, float, NurtureContext]] = {}


def suppression_context() -> NurtureContext:
    """``load_context()``, read again only when ``cadences.yaml`` or its suppression list
    changed (their mtimes): for code that checks suppression on every routing batch
    (booking's invitations). Its templates may be older than the files: suppression only."""
    from leadflow.settings import get_settings

    path = get_settings().rules_dir / "cadences.yaml"
    known = _SUPPRESSION.get(str(path))
    if known is not None and known[0] == _mtime(path) and known[2] == _mtime(known[1]):
        return known[3]
    stamp = _mtime(path)
    context = load_context()
    listed = context.rules.suppression_list
    listed_path = path.parent / listed if listed else None
    _SUPPRESSION[str(path)] = (stamp, listed_path, _mtime(listed_path), context)
    return context


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


# --------------------------------------------------------------------------- suppression


def _truthy(values: pd.Series) -> np.ndarray:
    """Yes-like text, or a number other than 0: a JSON ``true`` reads as ``'true'`` on
    PostgreSQL and as ``1`` on SQLite, ``1.0`` once a lead without it makes the column float."""
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip().str.lower()
    number = pd.to_numeric(values.astype(object), errors="coerce")
    return (text.isin({"true", "yes", "y", "1", "t"}) | (number.notna() & (number != 0))).to_numpy()


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


# --------------------------------------------------------------------------- touch helpers


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


# --------------------------------------------------------------------------- enrolment


def _enrol(
    leads: pd.DataFrame,
    suppressed: pd.Series,
    history: pd.DataFrame,
    context: NurtureContext,
    now: datetime,
) -> pd.DataFrame:
    """New enrolments: leads whose entry criteria hold, not suppressed, not already active in
    the cadence, and allowed back in (``reentry``, ``reentry_after``).

    Example: warm nurturing leads 1 to 4. Lead 1, never enrolled: ``warm`` entry 1 at step
    1, due at once. Lead 2, unsubscribed: nothing. Lead 3, active in ``warm``: nothing. Lead
    4 left ``warm`` at step 2 five days ago: with ``reentry: never``, or ``restart`` after
    30 days, nothing; 40 days ago with ``resume``: entry 2 at step 2, due in 2 days.
    """
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
    """An enrolment row not yet in the database (``id`` NA), at ``step``, due after that
    step's delay. Example: lead 1 into ``warm`` at step 1: due ``now`` (``hello`` has no
    delay); into ``later``: due in 30 days."""
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


# --------------------------------------------------------------------------- the plan


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


def plan_batch(
    leads: pd.DataFrame, inputs: NurtureInputs, context: NurtureContext, now: datetime
) -> Plan:
    """The hop's decisions for a batch of nurturing leads (pure), step by step.

    Example at Monday 10:00 UTC, warm leads: lead 1 (UTC, never enrolled) enrols in
    ``warm`` and its step 1 is queued at once; lead 2 (New York, 05:00 there) enrols and its
    step 1 waits for 08:00 New York (13:00 UTC); lead 3 (unsubscribed) does not enrol; lead
    4, active in ``warm`` and due, replied since: its enrolment exits ``replied``.
    """
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    leads = leads.reset_index(drop=True)
    suppressed = suppression(leads, inputs.signals, context)
    fresh = _enrol(leads, suppressed, inputs.enrolments, context, now)
    look = _lookups(leads, inputs, suppressed, context.rules, now)
    records, entries = _open_enrolments(inputs.enrolments, fresh)
    due = _due(records, now)
    walk = _Walk(context, now, look, records, entries, _lead_rows(leads, due))
    for record in due:
        walk.decide(record)
    return _assemble(walk, records, fresh, look, now, context.rules)


@dataclass(frozen=True)
class _Lookups:
    """What the decisions of a batch read, computed once per batch."""

    reasons: dict[int, str | None]  # lead -> why it must never be contacted (None: it may)
    zones: pd.Series  # lead id -> its time zone
    window: dict[int, datetime]  # lead -> the first instant at or after now it may be contacted
    last_signal: dict[tuple[int, str], Any]  # (lead, signal kind) -> its latest time
    sent_before: dict[int, int]  # lead -> touches queued in the 7 days before now
    oldest: dict[int, Any]  # lead -> the oldest of those
    delays: dict[tuple[str, int], timedelta]  # (cadence, step number) -> the step's delay


def _lookups(
    leads: pd.DataFrame,
    inputs: NurtureInputs,
    suppressed: pd.Series,
    rules: CadenceRules,
    now: datetime,
) -> _Lookups:
    """The batch's lookups, each built once per batch, not per enrolment (time zones once per
    distinct zone, the week's touches in one group-by).

    Example at Monday 10:00 UTC: lead 1 in ``UTC``: ``window[1]`` is now; lead 2 in
    ``America/New_York`` (05:00 there): ``window[2]`` is 13:00 UTC, 08:00 in New York; lead 2
    with touches queued Saturday and Sunday and one 8 days ago: ``sent_before[2]`` is 2 and
    ``oldest[2]`` Saturday's (the one of 8 days ago no longer counts).
    """
    lead_ids = leads["id"].astype("int64")
    zones = pd.Series(lead_zones(leads, rules).to_numpy(), index=lead_ids.to_numpy())
    signals, recent = inputs.signals, inputs.recent
    in_window = recent[recent["decided_at"] > pd.Timestamp(now) - WEEK]
    per_lead = in_window.groupby(in_window["lead_id"].astype("int64"))
    return _Lookups(
        reasons={
            int(i): (r if isinstance(r, str) else None)
            for i, r in zip(lead_ids, suppressed, strict=True)
        },
        zones=zones,
        window=windows(zones, now, rules).to_dict(),
        last_signal={
            (int(lead), kind): last
            for lead, kind, last in zip(
                signals["lead_id"], signals["kind"], signals["last"], strict=True
            )
        },
        sent_before=per_lead.size().to_dict(),
        oldest=per_lead["decided_at"].min().to_dict(),
        delays={
            (cadence.name, number): timedelta(minutes=step.minutes)
            for cadence in rules.cadences
            for number, step in enumerate(cadence.steps, start=1)
        },
    )


def _open_enrolments(
    history: pd.DataFrame, fresh: pd.DataFrame
) -> tuple[list[dict[str, Any]], dict[tuple[int, str], int]]:
    """The enrolments the batch works on: the active ones read, then the new ones, as records
    flagged ``new`` and ``changed``; and the highest entry number per (lead, cadence).

    Example: lead 1 exited ``warm`` (entry 1) and is active in ``cold``; lead 2 was just
    enrolled in ``warm``. Records: lead 1's ``cold`` (not new, unchanged so far), lead 2's
    ``warm`` (new); entries: (1, warm) 1, (1, cold) 1, (2, warm) 1.
    """
    entries: dict[tuple[int, str], int] = {
        (int(lead), cadence): int(n)
        for (lead, cadence), n in history.groupby(["lead_id", "cadence"])["entry_no"].max().items()
    }
    records = _records(history[history["status"] == ACTIVE]) + _records(fresh)
    for record in records:
        record["new"] = pd.isna(record["id"])
        record["changed"] = record["new"]
        key = (record["lead_id"], record["cadence"])
        entries[key] = max(entries.get(key, 0), int(record["entry_no"]))
    return records, entries


def _due(records: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The enrolments due at ``now``, lead by lead, each lead's in due order (then by cadence).

    Example at Monday 10:00: lead 2's ``warm`` and ``cold`` both due 09:55, lead 1's ``warm``
    due Wednesday, lead 3's just enrolled in ``cold`` (due Tuesday, 1 day): [lead 2's
    ``cold``, lead 2's ``warm``]; leads 1 and 3 wait for a later tick.
    """
    stamp = pd.Timestamp(now)
    return sorted(
        (r for r in records if pd.notna(r["due_at"]) and r["due_at"] <= stamp),
        key=lambda r: (r["lead_id"], r["due_at"], r["cadence"]),
    )


def _lead_rows(leads: pd.DataFrame, due: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The fields of the leads with an enrolment due, by id (templates read them): only those
    leads become dicts. Example: a batch of 5,000 leads, 30 of them due: 30 dicts."""
    if not due:
        return {}
    wanted = leads["id"].astype("int64").isin({int(r["lead_id"]) for r in due}).to_numpy()
    return {int(r["id"]): r for r in _records(leads[wanted])}


def exit_reason(
    cadence: Cadence, lead_id: int, enrolled_at: Any, last_signal: dict[tuple[int, str], Any]
) -> str | None:
    """The first of the cadence's exits signalled at or after the enrolment (None: none).
    ``unsubscribed`` and ``bounced`` are suppression's, for every cadence; ``became_mql`` and
    ``disqualified`` are statuses, ended before the hop (``store.prepare_tick``).

    Example, ``warm`` enrolled Monday 09:00: a reply Monday 09:30: ``"replied"``; a reply
    the week before: None; a meeting activity (kind ``meeting``) on Monday 09:30:
    ``"meeting_booked"``; an unsubscribe: None here (suppressed next).
    """
    for reason in cadence.exit:
        if reason in SUPPRESSING:
            continue  # suppression, for every cadence
        kinds = {"meeting_booked": ("meeting_booked", "meeting")}.get(
            reason, (EXIT_EVENTS.get(reason),)
        )
        for kind in kinds:
            last = last_signal.get((lead_id, kind)) if kind else None
            if last is not None and last >= enrolled_at:
                return reason
    return None


class _Walk:
    """The decisions for a batch's due enrolments, one at a time in ``_due``'s order, and what
    they add up to. What one decision leaves for the next: the touches queued for a lead in
    this tick (the weekly cap counts them), and the cadences a lead is in (``on_finish``
    enrols a lead in a cadence once)."""

    def __init__(
        self,
        context: NurtureContext,
        now: datetime,
        look: _Lookups,
        records: list[dict[str, Any]],
        entries: dict[tuple[int, str], int],
        lead_rows: dict[int, dict[str, Any]],
    ) -> None:
        self.context, self.rules, self.look = context, context.rules, look
        self.now, self.stamp = now, pd.Timestamp(now)
        self.entries, self.lead_rows = entries, lead_rows
        self.active_in = {(r["lead_id"], r["cadence"]) for r in records}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.touches: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.notes: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self.finished: list[tuple[int, str]] = []
        self.disqualify: list[int] = []
        self.follow_ups: list[dict[str, Any]] = []  # enrolments on_finish starts
        self.queued_now: dict[int, int] = {}
        self.touched: set[int] = set()  # leads with a due enrolment

    def decide(self, record: dict[str, Any]) -> None:
        """One due enrolment: the first check that applies decides. Its cadence was removed:
        exit. Its steps ran out: finish. An exit signal since it enrolled: exit. The lead is
        suppressed (or has no address for an email): a ``suppressed`` touch, exit. Outside
        the lead's sending window, or at the weekly cap: deferred. Else the touch is queued.

        Example, ``warm`` step 1 due at Monday 10:00 for: lead 1, who replied since: exits
        ``replied``; lead 2, unsubscribed: exits ``suppressed: unsubscribed``; lead 3 in New
        York: due again at 13:00 UTC; lead 5: ``touch:5:warm:1:1`` queued.
        """
        lead_id = int(record["lead_id"])
        self.touched.add(lead_id)
        cadence = self.rules.cadence(record["cadence"])
        if cadence is None:
            removed = f"cadence {record['cadence']} removed from the rules"
            self.exit(record, removed, f"left {record['cadence']}: cadence removed")
            return
        number = int(record["step"])
        if number > len(cadence.steps):
            self.finish(record, cadence)
            return
        reason = exit_reason(cadence, lead_id, record["enrolled_at"], self.look.last_signal)
        if reason is not None:
            self.exit(record, reason, f"left {cadence.name}: {reason}")
            return
        step = cadence.steps[number - 1]
        lead = self.lead_rows[lead_id]
        why = self.look.reasons.get(lead_id)
        if why is None and step.channel == "email" and not isinstance(lead.get("email"), str):
            why = "no email address"
        if why is not None:
            self.suppress(record, cadence, step, why)
        elif not self.deferred(record, lead_id):
            self.send(record, cadence, number, step, lead)

    def end(self, record: dict[str, Any], status: str, reason: str) -> None:
        """Close the enrolment: ``status`` (exited, completed), why, when; nothing is due."""
        record.update(status=status, end_reason=reason, ended_at=self.stamp, due_at=pd.NaT)
        record["changed"] = True

    def exit(self, record: dict[str, Any], reason: str, note: str) -> None:
        """The enrolment exits for ``reason``, with a ledger note. Example: lead 1 replied:
        exited ``replied``, note "left warm: replied"."""
        self.end(record, EXITED, reason)
        self.counters["exited"] += 1
        self.notes.append((int(record["lead_id"]), note))

    def suppress(self, record: dict[str, Any], cadence: Cadence, step: Any, why: str) -> None:
        """Never contact the lead: a ``suppressed`` touch for the step (the record of why),
        and the enrolment exits. Example: lead 2 bounced: touch ``suppressed`` (reason
        ``bounced``), enrolment exited ``suppressed: bounced``, no message."""
        touch = _touch(record, cadence, step, "suppressed", why, None, self.context, self.stamp)
        self.touches.append(touch)
        self.end(record, EXITED, f"suppressed: {why}")
        self.counters["suppressed"] += 1
        self.notes.append((int(record["lead_id"]), f"left {cadence.name}: suppressed ({why})"))

    def deferred(self, record: dict[str, Any], lead_id: int) -> bool:
        """Hold the touch back, never drop it: to the lead's next sending window (quiet hours,
        weekends, in its time zone), or, at ``max_touches_per_week`` (counting this tick's),
        to a week after the oldest touch of the last 7 days. Returns whether it did.

        Example at Monday 10:00 UTC: a lead in Tokyo (19:00 there): due 08:00 Tuesday in
        Tokyo (23:00 UTC Monday); a lead in UTC with 5 touches in the last 7 days, the oldest
        last Wednesday 09:00: due this Wednesday 09:00; with 4: not deferred.
        """
        opens = self.look.window[lead_id]
        if opens > self.now:
            record.update(due_at=pd.Timestamp(opens), deferrals=int(record["deferrals"]) + 1)
            record["changed"] = True
            self.counters["deferred_quiet"] += 1
            return True
        sent = self.look.sent_before.get(lead_id, 0) + self.queued_now.get(lead_id, 0)
        if sent >= self.rules.max_touches_per_week:
            record.update(
                due_at=self.look.oldest.get(lead_id, self.stamp) + WEEK,
                deferrals=int(record["deferrals"]) + 1,
            )
            record["changed"] = True
            self.counters["deferred_cap"] += 1
            return True
        return False

    def send(
        self, record: dict[str, Any], cadence: Cadence, number: int, step: Any, lead: dict
    ) -> None:
        """Render the step for the lead and queue it (an outbox message, a ``queued`` touch),
        then advance the enrolment: the next step is due after its delay, or past the last
        step the cadence finishes. A template error queues nothing: the enrolment stays due,
        with ``last_error``, for the next tick.

        Example: ``warm`` step 1 for lead 5: message ``touch:5:warm:1:1``, enrolment at step 2
        due Wednesday 10:00. Step 3 (``call-task``, the last) goes to the rep and finishes
        ``warm``: lead 5 enrols in ``later``.
        """
        lead_id = int(record["lead_id"])
        values = _values(lead | {"id": lead_id}, self.context) | {
            "cadence": cadence.name,
            "step": step.name,
        }
        try:
            subject, body = render(step, values, self.context.templates)
        except Exception as exc:  # a template error: the touch waits for a fixed template
            error = (
                f"{cadence.name} step {number} ({step.name}): template {step.template}: "
                f"{type(exc).__name__}: {exc}"
            )
            record.update(last_error=error[:1000], changed=True)
            self.counters["template_failed"] += 1
            self.errors.append(error)
            return
        key = _key(lead_id, cadence.name, int(record["entry_no"]), number)
        self.messages.append(_message(key, step, lead_id, values, subject, body))
        self.touches.append(
            _touch(record, cadence, step, "queued", None, key, self.context, self.stamp)
        )
        self.queued_now[lead_id] = self.queued_now.get(lead_id, 0) + 1
        self.counters["queued"] += 1
        record.update(last_touch_at=self.stamp, last_error=None, step=number + 1, changed=True)
        if number + 1 > len(cadence.steps):
            self.finish(record, cadence)
        else:
            record["due_at"] = self.now + self.look.delays[(cadence.name, number + 1)]

    def finish(self, record: dict[str, Any], cadence: Cadence) -> None:
        """The last step went out (or the steps ran out): the cadence says what is next.

        Example: lead 5 finishes ``warm`` (``then: cadence, cadence: later``): completed,
        note "finished warm: on to later", a new ``later`` enrolment (unless already in it).
        Lead 6 finishes ``cold`` (``then: disqualify``): completed, and lead 6 is
        disqualified.
        """
        self.end(record, COMPLETED, "finished")
        self.counters["finished"] += 1
        lead_id = int(record["lead_id"])
        self.finished.append((lead_id, cadence.name))
        then = cadence.on_finish
        if then.then == "disqualify":
            self.disqualify.append(lead_id)
            self.notes.append((lead_id, f"finished {cadence.name}: disqualified per on_finish"))
            return
        target = self.rules.cadence(then.cadence or "")
        assert target is not None  # checked at load
        self.notes.append((lead_id, f"finished {cadence.name}: on to {target.name}"))
        if (lead_id, target.name) in self.active_in:
            return
        entry = self.entries.get((lead_id, target.name), 0) + 1
        self.entries[(lead_id, target.name)] = entry
        self.active_in.add((lead_id, target.name))
        follow_up = _new_enrolment(lead_id, target, entry, 1, self.context, self.now)
        self.follow_ups.append(follow_up | {"new": True, "changed": True})


def _assemble(
    walk: _Walk,
    records: list[dict[str, Any]],
    fresh: pd.DataFrame,
    look: _Lookups,
    now: datetime,
    rules: CadenceRules,
) -> Plan:
    """The walk's decisions as the frames the store writes, and the gate's frame: one row per
    lead decided for (enrolled, due, or disqualified).

    Example: lead 1 enrolled in ``warm`` and its step 1 queued, lead 2's touch deferred:
    enrolments: lead 1's (``new``) and lead 2's (the new due time); touches: lead 1's;
    notes: "enrolled in warm" for lead 1; checked: leads 1 and 2; stats: ``enrolled`` 1,
    ``queued`` 1, ``deferred_quiet`` 1.
    """
    touched = set(fresh["lead_id"].astype("int64")) | walk.touched | set(walk.disqualify)
    changed = [r for r in records + walk.follow_ups if r["changed"]]
    touches = pd.DataFrame(walk.touches, columns=TOUCH_COLUMNS)
    enrolled = [
        (int(i), f"enrolled in {c}")
        for i, c in zip(fresh["lead_id"], fresh["cadence"], strict=True)
    ]
    follow_ups = len(walk.follow_ups)
    return Plan(
        enrolments=pd.DataFrame(changed, columns=[*ENROLMENT_COLUMNS, "new"]),
        touches=touches,
        messages=pd.DataFrame(walk.messages, columns=list(outbox.MESSAGE_COLUMNS)[:9]),
        notes=pd.DataFrame(enrolled + walk.notes, columns=["lead_id", "reason"]),
        disqualify=sorted(set(walk.disqualify)),
        checked=gate_frame(
            sorted(touched), touches, look.reasons, look.zones, look.sent_before, now, rules
        ),
        stats={"enrolled": len(fresh) + follow_ups, "enrolled_next": follow_ups, **walk.counters},
        errors=walk.errors,
        finished=walk.finished,
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


# --------------------------------------------------------------------------- before the hop


def departed_reason(status: str) -> str:
    """Why an enrolment ends when its lead left ``nurturing`` for ``status``. Example:
    ``mql`` (or routed, accepted, qualified, won): ``became_mql``; ``disqualified``:
    ``disqualified``; ``recycled``: ``left nurture: recycled``."""
    if status in TO_SALES:
        return "became_mql"
    if status == Status.DISQUALIFIED:
        return "disqualified"
    return f"left nurture: {status}"


def moved_due(stale: pd.DataFrame, rules: CadenceRules, now: datetime) -> tuple[pd.Series, int]:
    """New due times for active enrolments that follow an older version of the cadences
    (``stale``: cadence, step, due_at, enrolled_at, last_touch_at), per ``on_change``, and how
    many were re-planned. ``keep``: the due time stays; ``replan``: due = the previous touch
    (else the enrolment) + the delay of the step in the new rules. An enrolment whose cadence
    was removed, or whose step is past its last, is due at ``now`` (``keep``: at the latest)
    so that the hop ends it per the rules.

    Example at Monday 10:00, ``warm``'s step 2 now 3 days after step 1 (was 2): an enrolment
    at step 2, last touched Friday 09:00, due Sunday 09:00: ``replan``: Monday 09:00 (1
    re-planned); ``keep``: Sunday 09:00. One in a removed cadence, due next week: Monday 10:00
    either way.
    """
    stamp = pd.Timestamp(now)
    delay = _step_delays(stale, rules)
    gone = delay.isna()
    if rules.on_change == "replan":
        since = pd.to_datetime(stale["last_touch_at"], utc=True).fillna(
            pd.to_datetime(stale["enrolled_at"], utc=True)
        )
        return (since + delay).where(~gone, stamp), int((~gone).sum())
    due = pd.to_datetime(stale["due_at"], utc=True)
    return due.where(~(gone & (due > stamp)), stamp), 0


def _step_delays(stale: pd.DataFrame, rules: CadenceRules) -> pd.Series:
    """Per enrolment, the delay of the step it is at, in ``rules`` (NaT: its cadence was
    removed, or its step is past the last); looked up once per distinct (cadence, step).
    Example: ``warm`` step 2: 2 days; ``warm`` step 4: NaT; a removed cadence: NaT."""
    pairs = list(zip(stale["cadence"], stale["step"].astype("int64").tolist(), strict=True))
    delays: dict[tuple[str, int], timedelta | None] = {}
    for name, number in set(pairs):
        cadence = rules.cadence(name)
        if cadence is None or number > len(cadence.steps):
            delays[(name, number)] = None
        else:
            delays[(name, number)] = timedelta(minutes=cadence.steps[number - 1].minutes)
    return pd.Series([delays[p] for p in pairs], index=stale.index, dtype="timedelta64[us]")
