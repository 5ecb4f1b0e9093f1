"""What flows read back to report: a finished subflow's data, lead counts by status."""

from __future__ import annotations

from typing import Any

from prefect.states import State

from leadflow import audit, store


def state_data(state: State) -> dict[str, Any]:
    """A hop flow's summary; for a run that did not complete, its state and message too."""
    try:
        data = state.result(raise_on_failure=False)
    except Exception:
        data = None
    data = dict(data) if isinstance(data, dict) else {}
    if not state.is_completed():
        data.update(state=state.type.value, message=state.message)
    elif state.name != "Completed":
        data["state"] = state.name
    return data


def status_counts(database_url: str) -> dict[str, int]:
    with store.get_engine(database_url).connect() as conn:
        return audit.status_counts(conn)
