"""Sales activities capture: calls, emails, meetings and the dispositions reps record.

Written by the skeleton in ``leadflow/capture/linked.py`` (lead by email or external id,
``lead_known``, keys, accounting) and gated by ``suites/activities.yaml``. On top of that:

- the rep is found by email or rep code, and must have held the lead when the activity
  happened (an assignment whose window covers ``occurred_at``); automated touches (nurture)
  name no rep and are never judged on ownership;
- dispositions move the lead through ``lifecycle``, walked per lead in time order within the
  chunk: accept (routed -> accepted), qualify (accepted -> qualified), won and lost (from
  qualified), reject (routed -> back to routing without that rep, or recycled to nurture, per
  ``reject`` in ``rules/sla.yaml``). A move the lifecycle does not allow, or a disposition from
  a rep who no longer holds the lead, is quarantined with the reason. A disposition whose
  move is already made (an ``accept`` for a lead already qualified, arriving late) is kept
  and moves nothing. Reject and lost need a reason;
- the same activity twice is one: its key is the source's activity id when it has one, else
  the lead, rep, type and time.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, func, select

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.capture import linked
from leadflow.capture import normalise as nz
from leadflow.capture.events import vocabulary
from leadflow.capture.rules import SourceMapping
from leadflow.capture.sources import RecordChunk
from leadflow.lifecycle import Status
from leadflow.rules.fields import ACTIVITY_TYPES

ACTOR = "activities"
# What CRMs call their activities -> our vocabulary (after lower-casing, spaces to _).
SYNONYMS = {
    "logged_call": "call",
    "phone_call": "call",
    "outbound_call": "call",
    "call_logged": "call",
    "called": "call",
    "email_sent": "email",
    "sent_email": "email",
    "logged_email": "email",
    "emailed": "email",
    "meeting_scheduled": "meeting_booked",
    "meeting_set": "meeting_booked",
    "demo_booked": "meeting_booked",
    "demo_scheduled": "meeting_booked",
    "meeting_completed": "meeting_held",
    "meeting_done": "meeting_held",
    "demo_held": "meeting_held",
    "demo_completed": "meeting_held",
    "no-show": "no_show",
    "noshow": "no_show",
    "meeting_no_show": "no_show",
    "did_not_show": "no_show",
    "meeting_canceled": "meeting_cancelled",
    "accepted": "accept",
    "sal": "accept",
    "working": "accept",
    "rejected": "reject",
    "declined": "reject",
    "qualified": "qualify",
    "sql": "qualify",
    "converted": "qualify",
    "closed_won": "won",
    "closed_lost": "lost",
    "not_now": "not_now",
    "not_ready": "not_now",
    "nurture": "not_now",
    "later": "not_now",
    "no_answer": "no_response",
    "unresponsive": "no_response",
    "no_reply": "no_response",
}
TRUE = frozenset({"true", "yes", "y", "1", "automated", "auto", "system"})
FALSE = frozenset({"false", "no", "n", "0", "manual", "human"})
# Dispositions that move the lead: the status they lead to, and the statuses in which that
# move is already made (a late duplicate of the decision moves nothing).
MOVES = {
    "accept": Status.ACCEPTED,
    "qualify": Status.QUALIFIED,
    "won": Status.WON,
    "lost": Status.LOST,
}
ALREADY = {
    "accept": {Status.ACCEPTED, Status.QUALIFIED, Status.WON, Status.LOST},
    "qualify": {Status.QUALIFIED, Status.WON, Status.LOST},
    "won": {Status.WON},
    "lost": {Status.LOST},
}
DISPOSITIONS = frozenset({*MOVES, "reject"})
DECIDED = {
    "accept": "accepted",
    "qualify": "qualified",
    "won": "won",
    "lost": "lost",
    "reject": "rejected",
}
NEEDS_REASON = frozenset({"reject", "lost"})
# An activity stamped a little after the run's `now` is clock skew; more is not yet real.
FUTURE_SLACK = timedelta(minutes=5)


def prepare_activities(
    chunk: RecordChunk, mapping: SourceMapping, *, source: str, now: datetime
) -> pd.DataFrame:
    """Map and normalise activity records (pure). One row per record, with the gate's columns."""
    out, field = linked.base_frame(chunk, mapping, source)
    out["rep"] = nz.clean_text(field("rep")).str.lower().astype(object)
    out["activity_type"] = vocabulary(field("activity_type"), SYNONYMS)
    text = field("occurred_at")
    out["occurred_at"], bad_time = nz.normalise_timestamp(text, now=now)
    parsed = pd.to_datetime(out["occurred_at"], utc=True)
    # normalise_timestamp blanks times over a day ahead: parse those again to say why.
    late = parsed > pd.Timestamp(now) + FUTURE_SLACK
    if bad_time.any():
        ahead, _ = nz.normalise_timestamp(text[bad_time], now=now + timedelta(days=365_000))
        late |= ahead.notna().reindex(text.index, fill_value=False)
    out["time_error"] = np.select(
        [text.isna(), late, bad_time],
        ["occurred_at is missing", "occurred_at is after now", "occurred_at is not a time"],
        None,
    )
    out["reason"] = nz.clean_text(field("reason")).astype(object)
    activity_id = nz.clean_text(field("activity_id"))
    out["activity_id"] = (linked.namespace(mapping, source) + ":" + activity_id.astype(str)).where(
        activity_id.notna(), None
    )
    flag = nz.clean_text(field("automated")).str.lower()
    out["automated"] = flag.isin(TRUE)
    out["automated_error"] = np.where(
        flag.notna() & ~flag.isin(TRUE | FALSE),
        "automated must be true/false (or yes/no, 1/0)",
        None,
    )
    return out


def activity_keys(frame: pd.DataFrame) -> list[str]:
    """The source's own id for the activity (namespaced by source) when it has one, else a
    hash of lead, rep, type and time."""
    given = frame["activity_id"]
    keys = ("id:" + given.astype(str)).where(given.notna() & (given.str.len() <= 200))
    missing = keys.isna().to_numpy()
    if missing.any():
        rest = frame[missing]
        parts = zip(
            rest["activity_id"].fillna("").astype(str),
            rest["lead_id"].astype("Int64").astype(str),
            rest["rep"].fillna("").astype(str),
            rest["activity_type"].astype(str),
            rest["occurred_at"].astype(str),
            strict=True,
        )
        keys[missing] = [
            "h:" + hashlib.sha256("|".join(p).encode()).hexdigest()[:32] for p in parts
        ]
    return keys.tolist()


# --------------------------------------------------------------------------- judging


def _reps(conn: Connection, names: list[str]) -> dict[str, int]:
    """Rep id by lower-cased email and by code."""
    if not names:
        return {}
    reps = t.reps
    found = conn.execute(
        select(reps.c.id, func.lower(reps.c.email), reps.c.code).where(
            func.lower(reps.c.email).in_(names) | reps.c.code.in_(names)
        )
    ).all()
    ids: dict[str, int] = {}
    for rep_id, email, code in found:
        ids[email] = int(rep_id)
        if code:
            ids[code.lower()] = int(rep_id)
    return ids


def _assignments(conn: Connection, lead_ids: list[int]) -> pd.DataFrame:
    a = t.assignments
    return store.read_frame_by_ids(
        conn,
        [a.c.id, a.c.lead_id, a.c.rep_id, a.c.rep_code, a.c.assigned_at, a.c.released_at],
        a.c.lead_id,
        lead_ids,
    )


def _owned(rows: pd.DataFrame, held: pd.DataFrame) -> pd.Series:
    """Whether each row's rep held the row's lead at ``occurred_at``."""
    if rows.empty or held.empty:
        return pd.Series(False, index=rows.index)
    pairs = (
        rows[["lead_id", "rep_id", "occurred_at"]]
        .astype({"lead_id": "int64", "rep_id": "int64"})
        .reset_index()
        .merge(held.astype({"lead_id": "int64", "rep_id": "int64"}), on=["lead_id", "rep_id"])
    )
    inside = (pairs["occurred_at"] >= pairs["assigned_at"]) & (
        pairs["released_at"].isna() | (pairs["occurred_at"] < pairs["released_at"])
    )
    return pd.Series(rows.index.isin(pairs.loc[inside, "index"]), index=rows.index)


def plan_moves(
    rows: pd.DataFrame, holders: dict[int, int], reject: str
) -> tuple[pd.Series, pd.Series]:
    """Walk each lead's dispositions in time order (pure).

    ``rows``: the chunk's otherwise valid, new activities (``lead_id``, ``lead_status``,
    ``rep_id``, ``activity_type``, ``occurred_at``, ``record_no``, ``automated``);
    ``holders``: the rep holding each lead now (open assignment). Returns, per row, the
    reason it may not be recorded (None when it may) and the status moves it makes, as a
    list of (from, to) pairs (None when it moves nothing).
    """
    errors = pd.Series(None, index=rows.index, dtype=object)
    planned: dict[Any, list[tuple[str, str]]] = {}
    deciding = rows["lead_id"].isin(rows.loc[rows["activity_type"].isin(DISPOSITIONS), "lead_id"])
    if not deciding.any():
        return errors, pd.Series(None, index=rows.index, dtype=object)
    ordered = rows[deciding].sort_values(["lead_id", "occurred_at", "record_no"])
    status: dict[int, str] = {}
    gave_up: dict[int, tuple[int, Any]] = {}  # lead -> (rep who rejected it, when)
    for row in ordered.itertuples():
        lead = int(row.lead_id)
        now_status = status.setdefault(lead, row.lead_status)
        kind = row.activity_type
        if not row.automated and lead in gave_up:
            rep, when = gave_up[lead]
            if int(row.rep_id) == rep and row.occurred_at >= when:
                errors[row.Index] = f"the rep rejected this lead at {when:%Y-%m-%d %H:%M} UTC"
                continue
        if kind not in DISPOSITIONS:
            continue
        if row.automated:
            errors[row.Index] = (
                f"{kind} is a person's decision; an automated activity cannot make it"
            )
            continue
        if holders.get(lead) != int(row.rep_id):
            errors[row.Index] = (
                f"{kind} from a rep who no longer holds the lead (it was reassigned)"
            )
            continue
        if kind == "reject":
            if now_status != Status.ROUTED:
                errors[row.Index] = (
                    f"reject needs a routed lead not yet accepted; it is {now_status}"
                    + (
                        " (after accepting, record lost or not_now)"
                        if now_status in ALREADY["accept"]
                        else ""
                    )
                )
                continue
            path = (
                [(Status.ROUTED, Status.MQL)]
                if reject == "reroute"
                else [(Status.ROUTED, Status.RECYCLED), (Status.RECYCLED, Status.NURTURING)]
            )
            planned[row.Index] = [(str(a), str(b)) for a, b in path]
            status[lead] = str(path[-1][1])
            gave_up[lead] = (int(row.rep_id), row.occurred_at)
            continue
        if now_status in ALREADY[kind]:
            continue  # the decision is already in the lifecycle: recorded, moves nothing
        try:
            lifecycle.check(now_status, MOVES[kind])
        except lifecycle.IllegalTransition as exc:
            errors[row.Index] = f"{kind}: {exc}"
            continue
        planned[row.Index] = [(now_status, str(MOVES[kind]))]
        status[lead] = str(MOVES[kind])
    moves = pd.Series([planned.get(i) for i in rows.index], index=rows.index, dtype=object)
    return errors, moves


def reject_policy() -> str:
    """What a reject does (``reject:`` in the SLA rules): reroute or recycle. Raises
    ``config.ConfigError`` naming the file and field when the rules are wrong."""
    from leadflow.settings import get_settings
    from leadflow.sla.rules import load_rules

    rules, _, _ = load_rules(get_settings().rules_dir / "sla.yaml")
    return rules.reject


def judge_activities(conn: Connection, frame: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """The suite's columns that need the store: the rep, ownership and the lifecycle walk."""
    frame = frame.copy()
    ids = _reps(conn, sorted(set(frame["rep"].dropna())))
    frame["rep_id"] = frame["rep"].map(ids).astype("Int64")
    human = ~frame["automated"]
    frame["rep_error"] = np.where(
        human & frame["rep"].isna(),
        "a rep's activity must name the rep (email or code)",
        np.where(
            human & frame["rep"].notna() & frame["rep_id"].isna(),
            "no rep with that email or code",
            None,
        ),
    )
    frame["reason_error"] = np.where(
        frame["activity_type"].isin(NEEDS_REASON) & frame["reason"].isna(),
        frame["activity_type"].astype(str) + " needs a reason",
        None,
    )
    known = frame["lead_id"].notna()
    leads = sorted(set(frame.loc[known, "lead_id"].astype("int64")))
    held = _assignments(conn, leads) if leads else pd.DataFrame()
    # A repeat was judged when it first came; its lead may have moved on since.
    check_owner = (
        known & human & frame["rep_id"].notna() & frame["occurred_at"].notna() & ~frame["repeat"]
    )
    owned = _owned(frame[check_owner], held)
    frame["owner_error"] = None
    frame.loc[check_owner & ~owned.reindex(frame.index, fill_value=False), "owner_error"] = (
        "the rep did not hold this lead when the activity happened"
    )
    valid = (
        frame["parse_error"].isna()
        & known
        & frame["activity_type"].isin(ACTIVITY_TYPES)
        & frame["occurred_at"].notna()
        & frame["time_error"].isna()
        & frame["automated_error"].isna()
        & frame["rep_error"].isna()
        & frame["reason_error"].isna()
        & frame["owner_error"].isna()
        & ~frame["repeat"]
    )
    frame["move_error"] = None
    frame["moves"] = None
    if valid.any():
        holders: dict[int, int] = {}
        if not held.empty:
            open_ = held[held["released_at"].isna()].sort_values("assigned_at")
            holders = dict(
                zip(open_["lead_id"].astype(int), open_["rep_id"].astype(int), strict=True)
            )
        errors, moves = plan_moves(frame[valid], holders, reject_policy())
        frame.loc[valid, "move_error"] = errors
        frame.loc[valid, "moves"] = moves
    return frame


# --------------------------------------------------------------------------- writing


def activity_rows(fresh: pd.DataFrame, source: str, batch_id: int, now: datetime) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lead_id": fresh["lead_id"].astype("int64").to_numpy(),
            "rep_id": fresh["rep_id"].astype("Int64").to_numpy(),
            "activity_type": fresh["activity_type"].to_numpy(),
            "occurred_at": fresh["occurred_at"],
            "automated": fresh["automated"].astype(bool).to_numpy(),
            "reason": fresh["reason"].to_numpy(),
            "properties": fresh["properties"].to_numpy(),
            "source": source,
            "activity_key": fresh["activity_key"].to_numpy(),
            "batch_id": batch_id,
            "record_no": fresh["record_no"].to_numpy(),
            "recorded_at": pd.Timestamp(store.utcnow()),
        }
    )


def apply_dispositions(
    conn: Connection, fresh: pd.DataFrame, context: linked.ChunkContext
) -> dict[str, int]:
    """The planned moves through ``lifecycle`` (one wave per step a lead takes in this
    chunk), with the owner released on a reject and the outcome set on won or lost."""
    steps = []
    for row in fresh[fresh["moves"].notna()].itertuples():
        for from_status, to_status in row.moves:
            steps.append(
                {
                    "id": int(row.lead_id),
                    "from_status": from_status,
                    "to_status": to_status,
                    "at": row.occurred_at,
                    "kind": row.activity_type,
                    "activity": row.activity_key,
                    "record_no": int(row.record_no),
                    "reason": f"{row.activity_type}" + (f": {row.reason}" if row.reason else ""),
                    "details": {"activity_key": row.activity_key, "batch_id": context.batch_id,
                                "record_no": int(row.record_no)},
                }
            )  # fmt: skip
    if not steps:
        return {}
    # Each lead's steps in the order the walk made them: by time, then file line.
    plan = pd.DataFrame(steps).sort_values(["id", "at", "record_no"], kind="stable")
    plan["wave"] = plan.groupby("id").cumcount()
    for _, wave in plan.groupby("wave", sort=True):
        for to_status, group in wave.groupby("to_status"):
            changes = group[["id", "from_status", "to_status", "reason", "details"]].copy()
            if to_status in (Status.WON, Status.LOST):
                changes["outcome"] = to_status
            if group["kind"].iloc[0] == "reject" and group["from_status"].iloc[0] == Status.ROUTED:
                changes["owner_rep_id"] = None
            lifecycle.apply(
                conn,
                changes.reset_index(drop=True),
                actor=ACTOR,
                at=group["at"].reset_index(drop=True),
                flow_run_id=context.flow_run_id,
            )
    rejected = plan[(plan["kind"] == "reject") & (plan["from_status"] == Status.ROUTED)]
    if len(rejected):
        release_rejected(conn, fresh[fresh["activity_key"].isin(rejected["activity"])])
    # One decision per activity, however many steps it took (a reject to nurture is two).
    decisions = plan.drop_duplicates("activity").groupby("kind").size()
    return {DECIDED[kind]: int(n) for kind, n in decisions.items()}


def release_rejected(conn: Connection, rejects: pd.DataFrame) -> None:
    """A rejected lead's open assignment ends at the reject, with its reason: routing never
    hands it back to that rep (``routing_store.reps_to_avoid``)."""
    held = _assignments(conn, sorted(set(rejects["lead_id"].astype("int64"))))
    held = held[held["released_at"].isna()]
    by_lead = rejects.drop_duplicates("lead_id").set_index("lead_id")
    held = held[held["lead_id"].isin(by_lead.index)]
    if held.empty:
        return
    store.update_from_frame(
        conn,
        t.assignments,
        pd.DataFrame(
            {
                "id": held["id"].astype("int64").to_numpy(),
                "released_at": [by_lead.loc[i, "occurred_at"] for i in held["lead_id"]],
                "released_reason": [
                    f"rejected: {by_lead.loc[i, 'reason']}" for i in held["lead_id"]
                ],
            }
        ),
    )


ACTIVITIES = linked.LinkedKind(
    target="activities",
    table=t.activities,
    key_column="activity_key",
    prepare=prepare_activities,
    keys=activity_keys,
    rows=activity_rows,
    judge=judge_activities,
    effects=apply_dispositions,
)
