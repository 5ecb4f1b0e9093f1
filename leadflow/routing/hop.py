"""The routing hop, declared on the shared runner: MQLs become ``routed`` with an owner.

``fetch`` reads, inside the claim's transaction (one router at a time), the reps (synced from
the rules), the round-robin counters and each rep's load, and the meeting slots already
offered; ``route_batch`` is pure (``leadflow/routing/decide.py`` decides); the runner gates with
``suites/routed.yaml`` and writes the new statuses and owners, the assignment rows, the new
counters and the owner notifications (through the outbox) in one transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, func, select

from leadflow import store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.outbox import store as outbox
from leadflow.queue import Strategy
from leadflow.routing import decide as routing
from leadflow.routing import notices as notify
from leadflow.routing import store as routing_store
from leadflow.routing.rules import RoutingRules
from leadflow.runner import Hop, HopResult, HopRun

DETAIL_COLUMNS = (
    "id",
    "status",
    "email",
    "first_name",
    "last_name",
    "company",
    "title",
    "phone",
    "score",
    "temperature",
    "domain",
    "country",
    "industry",
    "employees",
    "revenue",
    "account_owner_rep_id",
)


# What makes the owner notices carry each lead's booking link (and queues the lead's own
# invitation): ``(conn, notices, rules, now, leads)`` -> the notices to queue. Booking's
# ``invites.with_links``, set by whoever loads the rules (tasks/routing.py ``load_context``):
# routing knows no booking.
NoticeLinks = Callable[..., pd.DataFrame]


@dataclass(frozen=True)
class RouteContext:
    rules: RoutingRules
    version: str
    text: str
    links: NoticeLinks | None = dataclasses.field(default=None, compare=False, repr=False)

    def with_links(
        self, conn: Connection, notices: pd.DataFrame, now: datetime, leads: Any = None
    ) -> pd.DataFrame:
        """``notices`` as ``links`` makes them (unchanged without it)."""
        if self.links is None:
            return notices
        return self.links(conn, notices, self.rules, now, leads)


@dataclass
class RouteInputs:
    """What routing reads besides the leads, in the claim's transaction."""

    rep_ids: dict[str, int]  # rep code -> reps.id
    state: pd.DataFrame  # routing.STATE_COLUMNS
    busy: dict[str, list[tuple[datetime, datetime]]]  # slots already offered, per rep code
    exclude: dict[int, list[str]] = dataclasses.field(
        default_factory=dict
    )  # lead -> reps it must avoid


def lead_columns(context: RouteContext) -> list[Any]:
    """Identity and details for the message, and every field the rules read."""
    leads = t.leads
    columns: list[Any] = [leads.c[name] for name in DETAIL_COLUMNS]
    columns.append(leads.c.status_changed_at.label("queued_at"))  # when it became an MQL
    extra = (t.lead_column(name) for name in sorted(context.rules.fields() - set(DETAIL_COLUMNS)))
    return columns + [column for column in extra if column is not None]


def fetch_reps(
    conn: Connection, leads: pd.DataFrame, context: RouteContext, now: datetime
) -> RouteInputs:
    rep_ids = routing_store.sync_reps(conn, context.rules, now)
    return RouteInputs(
        rep_ids=rep_ids,
        state=routing_store.read_state(conn, context.rules, rep_ids, now),
        busy=routing_store.proposed_slots(conn, context.rules, now),
        exclude=routing_store.reps_to_avoid(conn, leads["id"].tolist(), now),
    )


def route_batch(
    leads: pd.DataFrame, inputs: RouteInputs, context: RouteContext, now: datetime
) -> HopResult:
    """The hop's pure function: owners, reasons and messages for a batch of MQLs. Leads
    waiting for capacity stay ``mql`` (no change written) and are counted per pool."""
    leads = leads.assign(
        account_owner=routing_store.account_owner_codes(leads, inputs.rep_ids),
        exclude=leads["id"].map(lambda i: inputs.exclude.get(int(i), [])),
    )
    result = routing.route_leads(leads, context.rules, inputs.state, now, version=context.version)
    assigned = result.assignments[result.assignments["owner"].notna()]
    changes = pd.DataFrame(
        {
            "id": assigned["id"].to_numpy(),
            "from_status": Status.MQL.value,
            "to_status": Status.ROUTED.value,
            "owner_rep_id": assigned["owner"].map(inputs.rep_ids).to_numpy(),
            "reason": assigned["reason"].to_numpy(),
        }
    )
    messages = notify.owner_messages(assigned, leads, context.rules, now, busy=inputs.busy)
    waiting = result.assignments[result.assignments["owner"].isna()]
    return HopResult(
        changes=changes,
        checked=routing.gate_frame(result, context.rules),
        rows={"assignments": routing_store.assignment_rows(assigned, inputs.rep_ids, now, None)},
        stats={
            "routed": len(assigned),
            "waiting": len(waiting),
            "hot": int((leads["temperature"] == "hot").sum()),
            **{f"owner:{k}": int(v) for k, v in assigned["owner"].value_counts().items()},
            **{f"step:{k}": int(v) for k, v in assigned["step"].value_counts().items()},
            **{
                f"waiting:{k}": int(v)
                for k, v in waiting["pool"].fillna("-").value_counts().items()
            },
        },
        report={
            "state": result.reps_state,
            "messages": messages,
            "now": now,
            "leads": leads[[c for c in ("id", "email", "first_name") if c in leads.columns]],
        },
    )


def persist_routing(
    conn: Connection, result: HopResult, context: RouteContext, held: set[int]
) -> None:
    """The counters, the rule set's text, and one notification per assigned lead (not for
    leads the gate held), in the batch's transaction."""
    report = result.report
    routing_store.write_state(conn, report["state"], report["now"])
    record_rule_set(conn, context)
    messages = report.pop("messages")  # sent from the outbox, not returned to the flow
    leads = report.pop("leads")
    if held:
        messages = messages[~messages["lead_id"].isin(held)]
    messages = context.with_links(conn, messages, report["now"], leads)
    result.stats["queued"] = outbox.enqueue(conn, messages, now=report["now"])
    report.pop("state")


def record_rule_set(conn: Connection, context: RouteContext) -> None:
    """Keep the routing rules' text under their version (what every assignment names)."""
    store.insert_if_absent(
        conn,
        t.rule_sets,
        dict(
            version=context.version,
            kind="routing",
            name=context.rules.name,
            text=context.text,
            created_at=store.utcnow(),
        ),
    )


HOP = Hop(
    name="route",
    inputs=(Status.MQL,),
    suite="routed",
    # Serial: round-robin counters and rep capacity are shared by every lead of every run.
    strategy=Strategy.SERIAL,
    # Small batches: the serial lock is held for one batch, and the lane's routing of a
    # posted lead waits for it. 5,000 leads hold it about 1.5 s; bench/route.py routed 30k
    # leads in 8.2 s in batches of 5,000 and 8.5 s in one batch.
    batch_size=5_000,
    columns=lead_columns,
    fetch=fetch_reps,
    transform=route_batch,
    persist=persist_routing,
)


# --------------------------------------------------------------------------- run inputs


def summarise(run: HopRun, sent: dict[str, Any] | None) -> dict[str, Any]:
    """The route run's summary: routed, waiting, per owner, per step, notifications."""
    stats = run.stats
    return {
        "routed": stats.get("routed", 0),
        "waiting": stats.get("waiting", 0),
        "queued": stats.get("queued", 0),
        "quarantined": run.quarantined,
        "batches": run.batches,
        "per_rep": _prefixed(stats, "owner:"),
        "per_step": _prefixed(stats, "step:"),
        "waiting_per_pool": _prefixed(stats, "waiting:"),
        "notifications": sent or {},
    }


def _prefixed(stats: dict[str, Any], prefix: str) -> dict[str, int]:
    return dict(
        sorted(
            ((k[len(prefix) :], int(v)) for k, v in stats.items() if k.startswith(prefix)),
            key=lambda item: (-item[1], item[0]),
        )
    )


# --------------------------------------------------------------------------- dry run


def explain_routing(conn: Connection, lead_id: int) -> list[dict[str, Any]]:
    """Every routing decision for a lead, oldest first: owner, step, rule, pool, rules
    version, reason and the candidates considered (with why each was skipped)."""
    import json

    assignments = t.assignments
    rows = conn.execute(
        select(
            assignments.c.rep_code,
            assignments.c.step,
            assignments.c.rule,
            assignments.c.pool,
            assignments.c.version,
            assignments.c.reason,
            assignments.c.candidates,
            assignments.c.assigned_at,
        )
        .where(assignments.c.lead_id == lead_id)
        .order_by(assignments.c.id)
    ).mappings()
    out = []
    for row in rows:
        item = dict(row)
        if isinstance(item["candidates"], str):
            item["candidates"] = json.loads(item["candidates"])
        out.append(item)
    return out


def dry_run(
    database_url: str, context: RouteContext, since: datetime | None, now: datetime
) -> dict[str, Any]:
    """Replay routing for the MQLs of a period under ``context``'s rules and compare with the
    owners they have; writes nothing. The replay starts from even counters and no load (what
    the rules would do on their own), oldest first."""
    leads_table, assignments = t.leads, t.assignments
    latest = (
        select(
            assignments.c.lead_id,
            func.max(assignments.c.id).label("id"),
        )
        .group_by(assignments.c.lead_id)
        .subquery()
    )
    with store.get_engine(database_url).connect() as conn:
        current = store.read_frame(
            conn,
            select(
                assignments.c.lead_id.label("id"),
                assignments.c.rep_code.label("owner"),
                assignments.c.rule,
                assignments.c.assigned_at,
            ).join(latest, assignments.c.id == latest.c.id),
        )
        columns = lead_columns(context)
        waiting = leads_table.c.status == Status.MQL.value
        statement = select(*columns).where(
            waiting | leads_table.c.id.in_(select(assignments.c.lead_id))
        )
        leads = store.read_frame(conn, statement)
        rep_ids = dict(
            conn.execute(select(t.reps.c.code, t.reps.c.id).where(t.reps.c.code.is_not(None))).all()
        )
    if since is not None and len(current):
        recent = set(current.loc[current["assigned_at"] >= pd.Timestamp(since), "id"])
        leads = leads[leads["id"].isin(recent) | (leads["status"] == Status.MQL.value)]
    leads = leads.assign(account_owner=routing_store.account_owner_codes(leads, rep_ids))
    before = leads[["id"]].merge(current[["id", "owner", "rule"]], on="id", how="left")
    proposed = routing.route_leads(
        leads, context.rules, routing.empty_state(), now, version=context.version
    ).assignments
    diff = routing.diff_assignments(before, proposed)
    return {
        "version": context.version,
        "since": since.isoformat() if since else None,
        "leads": len(leads),
        "would_change_owner": len(diff.changed),
        "per_rep": diff.per_rep.to_dict("records"),
        "per_rule": diff.per_rule.to_dict("records"),
        "changed": diff.changed.head(200).to_dict("records"),
        "markdown": diff.to_markdown(),
    }
