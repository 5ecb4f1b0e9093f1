"""SLA check flow: every few minutes, all open timers at once (see ``leadflow/sla/check.py``).

Starts timers for new assignments, meets them with new activities, warns, records each
breach once per level, notifies rep and manager, reassigns through routing at level 2,
emits ``leadflow.sla.breached`` events, and publishes the open breaches and compliance.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from prefect import flow
from prefect.states import Completed, Failed, State

from leadflow import quality
from leadflow.settings import get_settings
from tasks import hops as hop_tasks
from tasks import rules_check
from tasks import sla as sla_tasks
from tasks.outbox import send_outbox


@flow(name="sla", flow_run_name=hop_tasks.run_name("sla"))
def sla(
    now: datetime | None = None,
    database_url: str | None = None,
    rules: str | None = None,
    routing: str | None = None,
    reps: str | None = None,
    notifier: str | None = None,
    max_events: int = 1000,
) -> State:
    """Check every open SLA timer at ``now`` with ``rules`` (default rules/sla.yaml);
    reassign with ``routing`` (default rules/routing.yaml, ``reps`` CSV replacing its reps);
    send due messages with ``notifier`` (default $LEADFLOW_NOTIFIER; none: they stay queued)."""
    started = time.monotonic()
    context, refused = rules_check.loaded(sla_tasks.load_context.fn, rules, routing, reps)
    if refused:  # before anything moves
        return refused
    database_url = database_url or get_settings().database_url
    now = now or datetime.now(UTC)
    notifier = notifier or os.environ.get("LEADFLOW_NOTIFIER")
    try:
        result = sla_tasks.run_check(database_url, context, now)
    except quality.GateFailed as failure:
        return Failed(message=f"SLA gate failed: {failure}", data={"gate": failure.result.checks})
    summary = result.summary()
    summary["version"] = context.version
    checked = time.monotonic()
    reported = sla_tasks.report(database_url, result.breaches, now, max_events)
    summary["flow_seconds"] = {"check": round(checked - started, 3), **reported.pop("seconds")}
    summary.update(reported)
    sent = send_outbox(database_url, notifier, now=now) if notifier else None
    summary["notifications"] = sent or {}
    summary["seconds"] = round(time.monotonic() - started, 3)
    hop_tasks.publish_gates("sla", [result.gate] if result.gate else [])
    return Completed(
        message=f"SLA check: {summary['timers_started']} timers started, "
        f"{summary['timers_met']} met, {summary['warnings']} warnings, "
        f"{summary['level_1']} breaches, {summary['level_2']} escalations",
        data=summary,
    )
