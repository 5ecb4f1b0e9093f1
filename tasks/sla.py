"""The sla concern's Prefect layer: its tasks, events and artifacts."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select

from leadflow import quality, store
from leadflow import tables as t
from leadflow.sla.check import CheckResult, check, compliance, open_breaches
from leadflow.sla.escalate import (
    SlaContext,
)
from tasks.hops import announce_refusals


@task(name="load-sla-rules", cache_policy=NO_CACHE)
def load_context(
    spec: str | None = None, routing_spec: str | None = None, reps_csv: str | None = None
) -> SlaContext:
    """SLA policies (default ``rules/sla.yaml``) and the routing rules they reassign with."""
    from leadflow.settings import get_settings
    from leadflow.sla.rules import load_rules
    from tasks.routing import load_context as load_routing

    rules, version, _ = load_rules(spec or get_settings().rules_dir / "sla.yaml")
    return SlaContext(rules, version, load_routing.fn(routing_spec, reps_csv))


@task(
    name="sla-check",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=lambda task, run, state: (
        not isinstance(state.result(raise_on_failure=False), quality.GateFailed)
    ),
)
def run_check(database_url: str, context: SlaContext, now: datetime) -> CheckResult:
    """One check in one transaction; a failing gate rolls it back and is recorded alone."""
    from prefect.runtime import flow_run

    engine = store.get_engine(database_url)
    run_id = flow_run.get_id()
    try:
        with engine.begin() as conn:
            return check(conn, context, now, flow_run_id=run_id)
    except quality.GateFailed as failure:
        with engine.begin() as conn:
            quality.record(conn, failure.result, flow_run_id=run_id, at=now)
        announce_refusals([failure.result])
        raise


def emit_breach_events(breaches: pd.DataFrame, codes: dict[int, str], limit: int = 1000) -> int:
    """One Prefect event ``leadflow.sla.breached`` per breach (lead, rep and policy as
    resources, so an automation can react); past ``limit`` in one check, one
    ``leadflow.sla.breached.many`` event with the count instead of a flood."""
    from prefect.events import emit_event

    emitted = 0
    for row in breaches.head(limit).itertuples():
        rep = codes.get(int(row.rep_id), str(row.rep_id)) if pd.notna(row.rep_id) else "none"
        emit_event(
            event="leadflow.sla.breached",
            resource={"prefect.resource.id": f"leadflow.lead.{row.lead_id}"},
            related=[
                {"prefect.resource.id": f"leadflow.rep.{rep}", "prefect.resource.role": "rep"},
                {
                    "prefect.resource.id": f"leadflow.sla-policy.{row.policy}",
                    "prefect.resource.role": "policy",
                },
            ],
            payload={"level": int(row.level), "action": row.action, "reason": row.reason},
        )
        emitted += 1
    if len(breaches) > limit:
        emit_event(
            event="leadflow.sla.breached.many",
            resource={"prefect.resource.id": "leadflow.sla"},
            payload={"breaches": len(breaches), "emitted_individually": limit},
        )
    return emitted


@task(name="sla-report", cache_policy=NO_CACHE)
def report(
    database_url: str, breaches: pd.DataFrame, now: datetime, max_events: int = 1000
) -> dict[str, Any]:
    """After a check: its breaches as Prefect events, the open breaches as a table artifact,
    and compliance per policy and rep (read in one connection)."""
    from prefect.artifacts import create_table_artifact

    started = time.monotonic()
    with store.get_engine(database_url).connect() as conn:
        codes = dict(conn.execute(select(t.reps.c.id, t.reps.c.code)).all())
        breached = open_breaches(conn)
        per_rep = compliance(conn)
    read = time.monotonic()
    events = emit_breach_events(breaches, codes, max_events)
    emitted = time.monotonic()
    create_table_artifact(
        key="sla-open-breaches",
        table=[
            {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
            for row in breached.to_dict("records")
        ]
        or [{"lead_id": None, "note": "no open breaches"}],
        description=f"Breached SLA timers still without an activity at {now:%Y-%m-%d %H:%M} UTC",
    )
    return {
        "events": events,
        "open_breaches": len(breached),
        "compliance": per_rep.to_dict("records"),
        "seconds": {"report": round(read - started, 3), "events": round(emitted - read, 3)},
    }
