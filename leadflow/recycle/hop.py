"""The recycle hop, declared on the shared runner: stalled leads go back to nurture.

``candidates`` finds, in SQL, the leads that may have stalled at ``now`` (owned for longer
than the shortest limit, a not-now/no-response disposition, lost for a recyclable reason).
Per batch (``LOCKED_IDS``), ``fetch`` reads their sales activities, assignments and past
enrolments; ``recycle_batch`` (pure, its steps in ``leadflow.recycle.decide``) decides, per
lead, whether it stalled and why (the reason code), the new recycle count, what happens to
the owner and the score, and where the lead goes: ``recycled -> nurturing``, into the
long-term cadence, or ``disqualified`` past ``max_recycles``. The runner gates with ``suites/recycled.yaml`` and writes, in one
transaction, both lifecycle steps, the assignments ended with the reason, their SLA timers
closed (a timer runs only while its lead is owned), the reps' cool-down, and the long-term
enrolment. Locks: the claimed leads (``FOR UPDATE SKIP LOCKED``: leads an SLA check holds
wait for the next run), then their assignments, then their timers (skipping, never waiting
for, one a check is closing): the order of ``leadflow.sla.check.hold_leads``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, and_, exists, func, literal, or_, select, update

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.nurture.rules import CadenceRules
from leadflow.queue import Strategy
from leadflow.recycle import decide
from leadflow.recycle.rules import RecycleRules, load_rules
from leadflow.runner import Hop, HopResult

ACTOR = "recycle"
OWNED = (Status.ROUTED.value, Status.ACCEPTED.value, Status.QUALIFIED.value)


@dataclass(frozen=True)
class RecycleContext:
    rules: RecycleRules
    version: str
    hot: float  # the scoring bands, for the temperature of a decayed score
    warm: float
    cadences: CadenceRules
    cadences_version: str


@dataclass
class RecycleInputs:
    activities: pd.DataFrame  # lead_id, activity_type, occurred_at, reason (people's only)
    assignments: pd.DataFrame  # id, lead_id, rep_code, assigned_at, released_at, ...
    entries: dict[int, int]  # lead -> highest entry_no in the after-max cadence


def load_context(
    spec: str | None = None, scoring: str | None = None, cadences: str | None = None
) -> RecycleContext:
    """The policy (default rules/recycle.yaml), the scoring bands, and the cadences (the
    after-max cadence must exist there)."""
    from leadflow import config
    from leadflow.nurture import rules as cadence_rules
    from leadflow.scoring.decide import rule_source
    from leadflow.settings import get_settings

    folder = get_settings().rules_dir
    path = spec or folder / "recycle.yaml"
    rules, version = load_rules(path)
    scoring_rules, _, _ = rule_source(scoring)
    cadence_set, cadence_version, _ = cadence_rules.load_rules(cadences or folder / "cadences.yaml")
    if rules.after_max == "cadence" and cadence_set.cadence(rules.after_max_cadence or "") is None:
        raise config.ConfigError(
            f"{path}: after_max_cadence: no cadence {rules.after_max_cadence!r} in the cadences "
            f"({', '.join(c.name for c in cadence_set.cadences)})"
        )
    return RecycleContext(
        rules,
        version,
        scoring_rules.bands.hot,
        scoring_rules.bands.warm,
        cadence_set,
        cadence_version,
    )


# --------------------------------------------------------------------------- candidates


def _lost_reason_matches(reason: Any, phrases: tuple[str, ...]) -> Any:
    lowered = func.lower(func.coalesce(reason, ""))
    return or_(*[lowered.like(f"%{p.lower()}%") for p in phrases]) if phrases else False


# --------------------------------------------------------------------------- the hop


def lead_columns(context: RecycleContext) -> list[Any]:
    leads = t.leads
    return [
        leads.c.id,
        leads.c.status,
        leads.c.status_changed_at,
        leads.c.owner_rep_id,
        leads.c.score,
        leads.c.temperature,
        leads.c.recycle_count,
    ]


def fetch_history(
    conn: Connection, leads: pd.DataFrame, context: RecycleContext, now: datetime
) -> RecycleInputs:
    ids = leads["id"].astype("int64").tolist()
    acts, a, e = t.activities, t.assignments, t.cadence_enrolments
    activities = store.read_frame_by_ids(
        conn,
        [acts.c.lead_id, acts.c.activity_type, acts.c.occurred_at, acts.c.reason],
        acts.c.lead_id,
        ids,
        where=acts.c.automated.is_(False),
    )
    assignments = store.read_frame_by_ids(
        conn,
        [a.c.id, a.c.lead_id, a.c.rep_code, a.c.assigned_at, a.c.released_at,
         a.c.released_reason, a.c.avoid_until],
        a.c.lead_id,
        ids,
    )  # fmt: skip
    entries: dict[int, int] = {}
    name = context.rules.after_max_cadence
    if name:
        past = store.read_frame_by_ids(
            conn, [e.c.lead_id, e.c.entry_no], e.c.lead_id, ids, where=e.c.cadence == name
        )
        entries = {int(k): int(v) for k, v in past.groupby("lead_id")["entry_no"].max().items()}
    for frame, columns in (
        (activities, ("occurred_at",)),
        (assignments, ("assigned_at", "released_at", "avoid_until")),
    ):
        for column in columns:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return RecycleInputs(activities, assignments, entries)


def stalled(
    leads: pd.DataFrame, inputs: RecycleInputs, rules: RecycleRules, now: datetime
) -> pd.Series:
    """Per lead, the reason code it stalled for, or None (pure)."""
    stamp = pd.Timestamp(now)
    acts = inputs.activities.assign(lead_id=inputs.activities["lead_id"].astype("int64"))
    since = leads.set_index(leads["id"].astype("int64"))["status_changed_at"]
    acts = acts.assign(since=acts["lead_id"].map(since))
    last_activity = acts.groupby("lead_id")["occurred_at"].max()
    recent = acts[acts["occurred_at"] >= acts["since"]]
    dispositions = (
        recent[recent["activity_type"].isin((*rules.dispositions, "accept", "qualify"))]
        .sort_values("occurred_at")
        .groupby("lead_id")
        .tail(1)
        .set_index("lead_id")["activity_type"]
    )
    phrases = [p.lower() for p in rules.lost_reasons]
    lost = (
        acts[acts["activity_type"] == "lost"].sort_values("occurred_at").groupby("lead_id").tail(1)
    )
    lost_reason = lost.set_index("lead_id")["reason"]
    assigned = (
        inputs.assignments.assign(lead_id=inputs.assignments["lead_id"].astype("int64"))
        .groupby("lead_id")["assigned_at"]
        .max()
    )
    out = []
    for row in leads.itertuples(index=False):
        lead = int(row.id)
        status = row.status
        latest = dispositions.get(lead)
        if status in OWNED and latest in rules.dispositions:
            out.append(str(latest))
            continue
        if status == Status.LOST:
            reason = lost_reason.get(lead)
            text = str(reason).lower() if isinstance(reason, str) else ""
            out.append(f"lost: {reason}" if any(p in text for p in phrases) else None)
            continue
        if status == Status.ROUTED:
            start = max(row.status_changed_at, assigned.get(lead, row.status_changed_at))
            limit = rules.delay(rules.routed_not_accepted)
            out.append("not_accepted" if stamp - start >= limit else None)
            continue
        if status in rules.no_activity:
            start = row.status_changed_at
            touched = last_activity.get(lead)
            if touched is not None and pd.notna(touched) and touched > start:
                start = touched
            limit = rules.delay(rules.no_activity[status])
            out.append(f"stalled_in_{status}" if stamp - start >= limit else None)
            continue
        out.append(None)
    return pd.Series(out, index=leads.index, dtype=object)


def recycle_batch(
    leads: pd.DataFrame, inputs: RecycleInputs, context: RecycleContext, now: datetime
) -> HopResult:
    """The hop's pure function: which leads go back, why, and how (the steps are in
    ``leadflow.recycle.decide``)."""
    rules = context.rules
    going = decide.going_back(leads, stalled(leads, inputs, rules, now))
    count = decide.recycle_count(going)
    over = count > rules.max_recycles
    then = decide.next_status(over, rules)
    changes = decide.recycled(going, count, rules, context.hot, context.warm)
    held = decide.assignments_of(inputs.assignments, changes["id"])
    long_term = decide.long_term_leads(changes, over, then)
    return HopResult(
        changes=changes,
        checked=decide.gate_frame(changes, going, count, over, then, rules),
        stats=decide.batch_stats(leads, going, then, long_term),
        report={
            "following": decide.back_to_nurture(changes, going, over, then, rules),
            "release": decide.releases(held, going, rules, pd.Timestamp(now)),
            "stopped": decide.stopped(held),
            "cooldown": decide.cooldowns(held, rules),
            "long_term": long_term.tolist(),
            "entries": inputs.entries,
            "now": now,
        },
    )


def close_timers(conn: Connection, stopped: pd.DataFrame, now: datetime) -> int:
    """Close the open SLA timers of the assignments recycling ended (``assignment_id``), with
    the reason an SLA check would give (``lead left: <status>``), in recycling's transaction.
    On PostgreSQL a timer an SLA check has locked (closing or meeting it) is skipped, not
    waited for: that check closes it, and recycling never waits on a check that may be
    waiting for recycling's leads. Returns the timers closed."""
    if stopped.empty:
        return 0
    timers = t.sla_timers
    closing = timers.alias("closing")
    closed = 0
    for status, group in stopped.groupby("status"):
        ids = select(closing.c.id).where(
            closing.c.closed_at.is_(None),
            closing.c.assignment_id.in_(sorted({int(i) for i in group["assignment_id"]})),
        )
        if store.is_postgres(conn):
            ids = ids.with_for_update(skip_locked=True)
        closed += conn.execute(
            update(timers)
            .where(timers.c.id.in_(ids.scalar_subquery()))
            .values(
                closed_at=literal(now, timers.c.closed_at.type),
                closed_reason=f"lead left: {status}",
            )
        ).rowcount
    return closed


def summarise(run: Any) -> dict[str, Any]:
    stats = run.stats
    return {
        "looked_at": int(stats.get("looked_at", 0)),
        "recycled": int(stats.get("recycled", 0)),
        "long_term": int(stats.get("long_term", 0)),
        "disqualified": int(stats.get("disqualified", 0)),
        "quarantined": run.quarantined,
        "reasons": {k[7:]: int(v) for k, v in stats.items() if k.startswith("reason:")},
        "from_status": {k[5:]: int(v) for k, v in stats.items() if k.startswith("from:")},
        "batches": run.batches,
    }


def persist_recycling(
    conn: Connection, result: HopResult, context: RecycleContext, held: set[int]
) -> None:
    """The second lifecycle step, the ended assignments and cool-downs, and the long-term
    enrolments, for the leads the gate passed."""
    report = result.report
    now = report["now"]
    run_id = result.flow_run_id
    following = report["following"]
    following = following[~following["id"].isin(held)].reset_index(drop=True)
    lifecycle.apply(conn, following, actor=ACTOR, at=now, flow_run_id=run_id)
    store.update_from_frame(conn, t.assignments, report["release"])
    store.update_from_frame(conn, t.assignments, report["cooldown"])
    # The ended assignments' timers stop too (a lead the gate held went to quarantine).
    went = dict(zip(following["id"].astype("int64"), following["to_status"], strict=True))
    stopped = report["stopped"]
    stopped["status"] = stopped["lead_id"].map(went).fillna(Status.QUARANTINED.value)
    close_timers(conn, stopped, now)
    long_term = [i for i in report["long_term"] if i not in held]
    if long_term:
        cadence = context.cadences.cadence(context.rules.after_max_cadence or "")
        assert cadence is not None  # checked at load
        stamp = pd.Timestamp(now)
        rows = pd.DataFrame(
            {
                "lead_id": long_term,
                "cadence": cadence.name,
                "version": context.cadences_version,
                "entry_no": [report["entries"].get(int(i), 0) + 1 for i in long_term],
                "step": 1,
                "status": "active",
                "due_at": stamp + timedelta(minutes=cadence.steps[0].minutes),
                "enrolled_at": stamp,
                "deferrals": 0,
                "updated_at": stamp,
            }
        )
        store.bulk_insert(conn, t.cadence_enrolments, rows)
        lifecycle.record_notes(
            conn,
            pd.Series(long_term),
            kind="nurture",
            reasons=pd.Series(
                [f"enrolled in {cadence.name} (recycled too often)"] * len(long_term)
            ),
            actor=ACTOR,
            at=now,
            flow_run_id=run_id,
        )
    result.report = None


HOP = Hop(
    name="recycle",
    inputs=(Status.ROUTED, Status.ACCEPTED, Status.QUALIFIED, Status.LOST),
    suite="recycled",
    strategy=Strategy.LOCKED_IDS,
    columns=lead_columns,
    fetch=fetch_history,
    transform=recycle_batch,
    persist=persist_recycling,
)


def candidates(database_url: str, context: RecycleContext, now: datetime) -> list[int]:
    """Leads that may have stalled at ``now`` (the hop decides precisely)."""
    rules = context.rules
    leads, acts = t.leads, t.activities
    shortest = min(
        [rules.delay(rules.routed_not_accepted), *map(rules.delay, rules.no_activity.values())]
    )
    disposed = exists().where(
        acts.c.lead_id == leads.c.id,
        acts.c.activity_type.in_(rules.dispositions),
        acts.c.occurred_at >= leads.c.status_changed_at,
    )
    lost = exists().where(
        acts.c.lead_id == leads.c.id,
        acts.c.activity_type == "lost",
        _lost_reason_matches(acts.c.reason, rules.lost_reasons),
    )
    query = select(leads.c.id).where(
        or_(
            and_(
                leads.c.status.in_(OWNED),
                or_(leads.c.status_changed_at <= now - shortest, disposed),
            ),
            and_(leads.c.status == Status.LOST.value, lost),
        )
    )
    with store.get_engine(database_url).connect() as conn:
        return sorted(int(i) for i in conn.execute(query).scalars())
