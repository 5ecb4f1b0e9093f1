"""Pipeline flow: run every hop, in lifecycle order, on whatever is waiting.

Each hop is its own flow (a subflow here), so a hop's gate failing fails the pipeline and
stops the hops after it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State

from leadflow import audit, store
from leadflow.settings import get_settings


def hops() -> list[tuple[str, Any]]:
    """The hops that exist, in order: (name, flow function taking now/database_url)."""
    from flows.enrich import enrich
    from flows.score import score

    return [("enrich", enrich), ("score", score)]


@flow(name="pipeline", flow_run_name="pipeline")
def pipeline(
    now: datetime | None = None,
    database_url: str | None = None,
    provider: str | None = None,
) -> State:
    """Run the hops in order. Returns a state whose data has each hop's summary and the
    lead counts by status. ``provider`` is the enrich hop's firmographics provider."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    database_url = database_url or get_settings().database_url
    summary: dict[str, Any] = {"hops": {}}
    failed = None
    options = {"enrich": {"provider": provider}}
    for name, hop in hops():
        state = hop(now=now, database_url=database_url, **options.get(name, {}), return_state=True)
        summary["hops"][name] = (
            state.result(raise_on_failure=False)
            if state.is_completed()
            else {
                "state": state.type.value,
                "message": state.message,
                **(_data(state)),
            }
        )
        if not state.is_completed():
            failed = f"hop '{name}' ended {state.type.value}: {state.message}"
            break
        if state.name != "Completed":
            summary["hops"][name]["state"] = state.name
    with store.get_engine(database_url).connect() as conn:
        summary["status_counts"] = audit.status_counts(conn)
    summary["seconds"] = round(time.monotonic() - started, 3)
    if failed:
        return Failed(message=failed, data=summary)
    return Completed(message="pipeline finished", data=summary)


def _data(state: State) -> dict[str, Any]:
    try:
        data = state.result(raise_on_failure=False)
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}
