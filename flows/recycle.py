"""Recycling flow: daily, with ``now``. Leads that stalled with sales go back to nurture
with a reason code (see ``leadflow/recycle/hop.py``); then the leakage report lists the leads
nobody is working."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed, State

from leadflow.recycle import hop
from leadflow.settings import get_settings
from tasks import hops as hop_tasks
from tasks import kpi as kpi_tasks
from tasks import recycle as recycle_tasks
from tasks import rules_check


@flow(name="recycle", flow_run_name=hop_tasks.run_name("recycle"))
def recycle(
    now: datetime | None = None,
    database_url: str | None = None,
    rules: str | None = None,
    batch_size: int | None = None,
) -> State:
    """Recycle stalled leads at ``now`` with ``rules`` (default rules/recycle.yaml)."""
    started = time.monotonic()
    context, refused = rules_check.loaded(hop.load_context, rules)  # before anything moves
    if refused:
        return refused
    database_url = database_url or get_settings().database_url
    now = now or datetime.now(UTC)
    ids = recycle_tasks.candidates(database_url, context, now)
    run = hop_tasks.drain(
        hop.HOP, context, database_url=database_url, now=now, candidates=ids, batch_size=batch_size
    )
    summary = hop.summarise(run)
    summary["candidates"] = len(ids)
    summary["version"] = context.version
    leaks = kpi_tasks.leakage(database_url, context.rules, now)
    summary["leakage"] = leaks["counts"]
    summary["suppressed_left_alone"] = leaks["not_leakage"]["suppressed"]
    summary["seconds"] = round(time.monotonic() - started, 3)
    create_table_artifact(
        key="recycle-run",
        table=[{"reason": k, "leads": v} for k, v in summary["reasons"].items()]
        + [
            {"reason": "(total recycled to nurture)", "leads": summary["recycled"]},
            {"reason": "(into the long-term cadence)", "leads": summary["long_term"]},
            {"reason": "(disqualified past the maximum)", "leads": summary["disqualified"]},
        ],
        description=f"Leads recycled at {now:%Y-%m-%d %H:%M} UTC, policy {context.version}",
    )
    if run.failure:
        return Failed(message=run.failure, data=summary)
    return Completed(
        message=f"recycled {summary['recycled']} (long-term {summary['long_term']}), "
        f"disqualified {summary['disqualified']}; leakage {leaks['total']}",
        data=summary,
    )
