"""Routing's public entry point for taking leads away from their owner: ``reassign``.

Another concern decides *which* leads lose their owner and *why* (the SLA check's level 2:
``leadflow/sla/escalate.py``); routing decides *who* takes each one and writes it as a route
run would. The rules route the lead again, excluding every rep who ever held it; when the
rules find nobody (everyone left has held it, or the pool is at capacity) the lead goes to the
manager the caller names, else to the fallback queue's owner.

``reassign`` runs in the caller's transaction, in this order (the lock order of
``leadflow.sla.check.hold_leads``; the caller has already locked the leads' rows):

1. routing's turn, ``TURN`` (the round-robin counters are shared with route runs; a caller
   that took it before locking the leads loses nothing: taking it again is a no-op);
2. reads: the leads (those still ``routed``), every rep who ever held them, then the reps
   (synced from the rules), the counters, the load and the meeting slots already offered;
3. decisions, pure: ``route_leads`` and then ``choose_owners``;
4. writes: the old assignments released, then ``on_release`` (the caller's rows keyed to
   them, e.g. the SLA's timers), the new assignments, the leads' owners and their ledger
   events, the counters;
5. the new owners' notifications, returned (the caller queues them with its own messages).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
from sqlalchemy import Connection

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.routing import decide as routing
from leadflow.routing import notices as notify
from leadflow.routing import store as routing_store
from leadflow.routing.hop import RouteContext, fetch_reps, lead_columns
from leadflow.routing.rules import RoutingRules

__all__ = ["MOVED_COLUMNS", "REQUEST_COLUMNS", "TURN", "Reassigned", "RouteContext", "reassign"]

# The routing hop's turn (its SERIAL claim, ``leadflow.queue``): reassigning shares its counters.
TURN = "leadflow.route"
# One row per lead to take away from its owner (what the caller says).
REQUEST_COLUMNS = ("lead_id", "assignment_id", "because", "manager", "released_reason")
# One row per lead that got a new owner (what ``reassign`` did).
MOVED_COLUMNS = ("lead_id", "owner", "rep_id", "step", "reason", "rerouted", "held_before")
# Routing steps whose owner the rules chose (anything else: nobody the rules could give it to).
CHOSEN = ("rule", "account_owner")

OnRelease = Callable[[Connection, list[int]], object]


@dataclass(frozen=True)
class Reassigned:
    moved: pd.DataFrame  # MOVED_COLUMNS, one row per lead given a new owner
    messages: pd.DataFrame  # the new owners' notifications (outbox rows), not yet queued


def reassign(
    conn: Connection,
    requests: pd.DataFrame,
    context: RouteContext,
    now: datetime,
    *,
    label: str,
    actor: str,
    flow_run_id: str | None = None,
    on_release: OnRelease | None = None,
) -> Reassigned:
    """Give each lead of ``requests`` a new owner, away from everyone who ever held it.

    ``requests`` has ``REQUEST_COLUMNS``, one row per lead: ``assignment_id`` is the lead's
    current assignment (released), ``because`` starts every reason written, ``manager`` (a rep
    code or email, or None) takes the lead when the rules find nobody, ``released_reason`` is
    written on the released assignment. Leads no longer ``routed`` are left alone.

    ``label`` names the steps written (``<label>_reassign``: the rules chose; ``<label>_manager``:
    the manager or the fallback owner took it); ``actor`` signs the ledger events.
    ``on_release(conn, assignment_ids)`` runs right after the old assignments are released and
    before anything else is written (keep it there: that is the lock order).

    Raises ValueError, before writing anything, if a new owner is not in the routing rules.
    """
    store.serialize_writers(conn, TURN)
    leads, exclude = read_leads(conn, requests, context)
    inputs = fetch_reps(conn, leads, context, now)
    leads = leads.assign(account_owner=routing_store.account_owner_codes(leads, inputs.rep_ids))
    result = routing.route_leads(leads, context.rules, inputs.state, now, version=context.version)
    decided = choose_owners(result.assignments, requests, exclude, context.rules, label=label)
    missing = sorted(set(decided["owner"]) - set(inputs.rep_ids))
    if missing:
        raise ValueError(
            f"{label.upper()} reassignment to reps not in the routing rules: {missing}"
        )
    release(conn, requests[requests["lead_id"].isin(decided["id"])], now, on_release)
    record(conn, decided, inputs.rep_ids, now, actor=actor, flow_run_id=flow_run_id)
    routing_store.write_state(conn, result.reps_state, now)
    messages = notify.owner_messages(decided, leads, context.rules, now, busy=inputs.busy)
    messages = context.with_links(conn, messages, now)
    return Reassigned(moved_frame(decided, inputs.rep_ids, exclude, label=label), messages)


# --------------------------------------------------------------------------- reads


def read_leads(
    conn: Connection, requests: pd.DataFrame, context: RouteContext
) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """The requested leads still ``routed`` (the routing hop's columns, plus ``exclude``) and,
    per requested lead, the codes of every rep who ever held it (sorted)."""
    lead_ids = sorted(set(requests["lead_id"].astype("int64")))
    leads = store.read_frame_by_ids(conn, lead_columns(context), t.leads.c.id, lead_ids)
    leads = leads[leads["status"] == Status.ROUTED.value]
    held = store.read_frame_by_ids(
        conn, [t.assignments.c.lead_id, t.assignments.c.rep_code], t.assignments.c.lead_id, lead_ids
    )
    exclude = held.groupby("lead_id")["rep_code"].agg(lambda s: sorted(set(s))).to_dict()
    return leads.assign(exclude=leads["id"].map(lambda i: exclude.get(int(i), []))), exclude


# --------------------------------------------------------------------------- decisions (pure)


def choose_owners(
    assignments: pd.DataFrame,
    requests: pd.DataFrame,
    exclude: dict[int, list[str]],
    rules: RoutingRules,
    *,
    label: str,
) -> pd.DataFrame:
    """``route_leads``'s ``assignments`` with each lead's final owner, step and reason.

    The rules' owner stands when a rule or the account owner chose it and it never held the
    lead (step ``<label>_reassign``); otherwise (nobody left, the pool at capacity, only the
    fallback) the request's ``manager`` takes it if it is a rep of the rules who never held
    it, else the fallback queue's owner (step ``<label>_manager``). Leads left with no owner
    are dropped.

    Example (the rules of ``tests/helpers.py``: ann and bob in pool ``na``, both managed by
    ``olga``, fallback owner ``olga``): lead 7 was held by ann, then by bob, and its request
    says ``because="SLA hot breached by bob"``, ``manager="olga"``. Routing excluded ann and
    bob, so the pool had nobody and it fell back (step ``fallback``): the lead goes to olga,
    step ``sla_manager``, reason "SLA hot breached by bob; nobody left who has not held it
    (ann, bob held it) → manager olga". Had bob not held it, the rules would have picked him:
    owner ``bob``, step ``sla_reassign``, reason "SLA hot breached by ann → rule ...".
    """
    decided = assignments.copy()
    current = requests.drop_duplicates("lead_id").set_index("lead_id")
    owners, steps, reasons = [], [], []
    for lead_id, owner, step, why_routed in zip(
        decided["id"].astype("int64"), decided["owner"], decided["step"], decided["reason"],
        strict=True,
    ):  # fmt: skip
        gone = set(exclude.get(int(lead_id), []))
        was = current.loc[int(lead_id)]
        if step in CHOSEN and owner not in gone:
            owners.append(owner)
            steps.append(f"{label}_reassign")
            reasons.append(f"{was['because']} → {why_routed}")
            continue
        owner, where = manager_or_fallback(was["manager"], gone, rules)
        why = "nobody left who has not held it" if step != "waiting" else "the pool is at capacity"
        owners.append(owner)
        steps.append(f"{label}_manager")
        reasons.append(f"{was['because']}; {why} ({', '.join(sorted(gone))} held it) → {where}")
    decided["owner"], decided["step"], decided["reason"] = owners, steps, reasons
    return decided[decided["owner"].notna()]


def manager_or_fallback(
    manager: object, gone: set[str], rules: RoutingRules
) -> tuple[str | None, str]:
    """Who takes a lead the rules could not give away, and how the reason names them: the
    manager (a rep code, or a rep's email, of the rules) unless they held it, else the
    fallback queue's owner."""
    code = None
    if isinstance(manager, str):
        codes = {rep.id for rep in rules.reps}
        by_email = {rep.email.lower(): rep.id for rep in rules.reps}
        code = manager if manager in codes else by_email.get(manager.lower())
    if code and code not in gone:
        return code, f"manager {code}"
    fallback = rules.fallback.owner
    return fallback, f"fallback queue owner {fallback} (no manager to take it)"


def moved_frame(
    decided: pd.DataFrame, rep_ids: dict[str, int], exclude: dict[int, list[str]], *, label: str
) -> pd.DataFrame:
    """``MOVED_COLUMNS`` for the leads ``choose_owners`` decided: ``rerouted`` when the rules
    chose the owner, ``held_before`` when the new owner had held the lead already."""
    ids = decided["id"].astype("int64")
    return pd.DataFrame(
        {
            "lead_id": ids.to_numpy(),
            "owner": decided["owner"].to_numpy(),
            "rep_id": decided["owner"].map(rep_ids).astype("int64").to_numpy(),
            "step": decided["step"].to_numpy(),
            "reason": decided["reason"].to_numpy(),
            "rerouted": (decided["step"] == f"{label}_reassign").to_numpy(),
            "held_before": [
                owner in exclude.get(int(i), [])
                for i, owner in zip(ids, decided["owner"], strict=True)
            ],
        },
        columns=list(MOVED_COLUMNS),
    )


# --------------------------------------------------------------------------- writes


def release(
    conn: Connection, requests: pd.DataFrame, now: datetime, on_release: OnRelease | None
) -> None:
    """End the requests' current assignments, then let the caller end what hangs on them."""
    store.update_from_frame(
        conn,
        t.assignments,
        pd.DataFrame(
            {
                "id": requests["assignment_id"].astype("int64").to_numpy(),
                "released_at": pd.Timestamp(now),
                "released_reason": requests["released_reason"].to_numpy(),
            }
        ),
    )
    if on_release is not None:
        on_release(conn, [int(i) for i in requests["assignment_id"]])


def record(
    conn: Connection,
    decided: pd.DataFrame,
    rep_ids: dict[str, int],
    now: datetime,
    *,
    actor: str,
    flow_run_id: str | None,
) -> None:
    """The new assignments, the leads' new owners (still ``routed``) and one ledger event
    ``reassignment`` per lead, with its reason, new owner and step."""
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
    lifecycle.apply(conn, changes, actor=actor, at=now, flow_run_id=flow_run_id)
    lifecycle.record_reassignments(
        conn,
        decided["id"],
        status=Status.ROUTED.value,
        reasons=decided["reason"],
        details=[
            json.dumps({"to": owner, "step": step})
            for owner, step in zip(decided["owner"], decided["step"], strict=True)
        ],
        actor=actor,
        at=now,
        flow_run_id=flow_run_id,
    )
