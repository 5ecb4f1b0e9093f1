"""Nurture flow: on a cron, with ``now``. Enrols eligible leads, sends every touch that is
due, defers what quiet hours or the frequency cap hold back, ends enrolments whose exits are
met, and finishes cadences per ``on_finish`` (see ``leadflow/nurture/hop.py``). Touches go out
through the outbox sender after the hop; without a notifier they stay queued."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed, State

from leadflow import runner as hops
from leadflow.nurture import hop
from leadflow.nurture.plan import load_context
from leadflow.settings import get_settings
from tasks import hops as hop_tasks
from tasks import nurture as nurture_tasks
from tasks import rules_check
from tasks.outbox import send_outbox


@flow(name="nurture", flow_run_name=hop_tasks.run_name("nurture"))
def nurture(
    now: datetime | None = None,
    database_url: str | None = None,
    rules: str | None = None,
    notifier: str | None = None,
    batch_size: int | None = None,
    send_limit: int = 5000,
    max_events: int = 1000,
) -> State:
    """One nurture tick at ``now`` with ``rules`` (default rules/cadences.yaml); then send up
    to ``send_limit`` due messages with ``notifier`` (block:NAME or maildir:PATH; default
    $LEADFLOW_NOTIFIER; none: touches stay queued in the outbox)."""
    started = time.monotonic()
    context, refused = rules_check.loaded(load_context, rules)  # before anything moves
    if refused:
        return refused
    database_url = database_url or get_settings().database_url
    now = now or datetime.now(UTC)
    notifier = notifier or os.environ.get("LEADFLOW_NOTIFIER")
    prepared = nurture_tasks.prepare_tick(database_url, context, now)
    ids = nurture_tasks.candidates(database_url, now)
    finished: list[tuple[int, str]] = []
    errors: list[str] = []

    def collect(outcome: hops.HopOutcome) -> None:
        report = outcome.report or {}
        finished.extend(report.get("finished", []))
        errors.extend(report.get("errors", []))

    run = hop_tasks.drain(
        hop.HOP,
        context,
        database_url=database_url,
        now=now,
        candidates=ids,
        batch_size=batch_size,
        on_batch=collect,
    )
    sent = (
        send_outbox(database_url, notifier, limit=send_limit, now=now)
        if notifier and not run.failure
        else None
    )
    summary = hop.summarise(run, prepared, sent)
    summary["candidates"] = len(ids)
    summary["version"] = context.version
    summary["template_errors"] = errors[:20]
    summary["events"] = nurture_tasks.emit_finished(finished, max_events)
    summary["seconds"] = round(time.monotonic() - started, 3)
    create_table_artifact(
        key="nurture-tick",
        table=[
            {"what": name, "count": summary[name]}
            for name in (
                "candidates",
                "enrolled",
                "queued",
                "deferred_quiet",
                "deferred_cap",
                "suppressed",
                "exited",
                "finished",
                "disqualified",
                "template_failed",
                "left_nurture",
                "quarantined",
            )
        ],
        description=f"Nurture tick at {now:%Y-%m-%d %H:%M} UTC, cadences {context.version}",
    )
    if run.failure:
        return Failed(message=run.failure, data=summary)
    message = (
        f"nurture: {summary['enrolled']} enrolled, {summary['queued']} touches queued, "
        f"{summary['deferred']} deferred, {summary['suppressed']} suppressed, "
        f"{summary['exited']} exited, {summary['finished']} finished"
    )
    if errors:
        message += f"; {summary['template_failed']} waiting on a template error: {errors[0]}"
    return Completed(message=message, data=summary)
