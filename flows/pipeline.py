"""Pipeline flow: run every hop, in lifecycle order (``leadflow/order.py``), on whatever is
waiting. Each hop is its own flow (a subflow here), so a hop's gate failing fails the
pipeline and stops the hops after it. The rules of every hop are checked before the first
runs (``tasks/rules_check.py``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State

from flows.enrich import enrich
from flows.route import route
from flows.score import score
from leadflow import order
from leadflow.settings import get_settings
from tasks import hops as hop_tasks
from tasks import reports, rules_check

FLOWS = {"enrich": enrich, "score": score, "route": route}  # hop name -> the flow that runs it


@flow(name="pipeline", flow_run_name=hop_tasks.run_name("pipeline"))
def pipeline(
    now: datetime | None = None,
    database_url: str | None = None,
    provider: str | None = None,
    notifier: str | None = None,
) -> State:
    """Run the hops in order. Returns a state whose data has each hop's summary and the
    lead counts by status. ``provider`` is the enrich hop's firmographics provider;
    ``notifier`` the route hop's (block:NAME or maildir:PATH; default $LEADFLOW_NOTIFIER).
    Every rules file the hops use is checked first: a bad one fails the run before the
    first hop moves a lead."""
    if refused := rules_check.refusal(rules_check.pipeline):
        return refused
    started = time.monotonic()
    now = now or datetime.now(UTC)
    database_url = database_url or get_settings().database_url
    summary: dict[str, Any] = {"hops": {}}
    failed = None
    options = {"enrich": {"provider": provider}, "route": {"notifier": notifier}}
    for name in order.hop_names():
        state = FLOWS[name](
            now=now, database_url=database_url, **options.get(name, {}), return_state=True
        )
        summary["hops"][name] = reports.state_data(state)
        if not state.is_completed():
            failed = f"hop '{name}' ended {state.type.value}: {state.message}"
            break
    summary["status_counts"] = reports.status_counts(database_url)
    summary["seconds"] = round(time.monotonic() - started, 3)
    if failed:
        return Failed(message=failed, data=summary)
    return Completed(message="pipeline finished", data=summary)
