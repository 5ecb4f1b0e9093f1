"""Route flow: every MQL gets an owner (or waits, with the reason, for capacity), and the
owners are told through the outbox. The hop is declared in ``leadflow/routing/hop.py``.

``route_dry_run``: replay routing for a period's MQLs under changed rules; write nothing.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed, State

from leadflow.routing import hop
from leadflow.settings import get_settings
from tasks import hops as hop_tasks
from tasks import routing as routing_tasks
from tasks import rules_check
from tasks.outbox import send_outbox


@flow(name="route", flow_run_name=hop_tasks.run_name("route"))
def route(
    now: datetime | None = None,
    database_url: str | None = None,
    rules: str | None = None,
    notifier: str | None = None,
    reps: str | None = None,
    batch_size: int | None = None,
) -> State:
    """Route waiting MQLs with ``rules`` (default rules/routing.yaml), then send due
    notifications with ``notifier`` (block:NAME[,block:NAME]; default $LEADFLOW_NOTIFIER;
    none: messages stay queued in the outbox). ``reps``: a reps CSV replacing the rules' reps."""
    started = time.monotonic()
    context, refused = rules_check.loaded(routing_tasks.load_context.fn, rules, reps)
    if refused:  # before anything moves
        return refused
    database_url = database_url or get_settings().database_url
    now = now or datetime.now(UTC)
    notifier = notifier or os.environ.get("LEADFLOW_NOTIFIER")
    run = hop_tasks.drain(
        hop.HOP, context, database_url=database_url, now=now, batch_size=batch_size
    )
    sent = send_outbox(database_url, notifier, now=now) if notifier and not run.failure else None
    summary = hop.summarise(run, sent)
    summary["version"] = context.version
    summary["seconds"] = round(time.monotonic() - started, 3)
    if summary["per_rep"]:
        create_table_artifact(
            key="route-distribution",
            table=[{"rep": rep, "leads": n} for rep, n in summary["per_rep"].items()],
            description=f"Leads routed per rep, rules {context.version}",
        )
    if run.failure:
        return Failed(message=run.failure, data=summary)
    return Completed(
        message=f"routed {summary['routed']}, waiting {summary['waiting']}, notifications "
        f"queued {summary['queued']}" + (f", sent {sent.get('sent', 0)}" if sent else ""),
        data=summary,
    )


@flow(name="route-dry-run", flow_run_name=hop_tasks.run_name("route-dry-run"))
def route_dry_run(
    rules: str,
    since: datetime | None = None,
    now: datetime | None = None,
    database_url: str | None = None,
) -> State:
    """What ``rules`` would change for the MQLs routed since ``since`` (and those waiting)."""
    context, refused = rules_check.loaded(routing_tasks.load_context.fn, rules)
    if refused:
        return refused
    database_url = database_url or get_settings().database_url
    now = now or datetime.now(UTC)
    report = routing_tasks.dry_run(database_url, context, since, now)
    create_markdown_artifact(
        key="route-dry-run",
        markdown=report["markdown"],
        description=f"Routing dry run with rules {report['version']}",
    )
    return Completed(
        message=f"dry run: {report['would_change_owner']} of {report['leads']} leads would "
        f"change owner under {report['version']}",
        data=report,
    )
