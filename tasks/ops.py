"""Runs a killed process left behind, as Prefect sees them.

A flow run whose process is SIGKILLed is marked Crashed by the heartbeat automation
(``app/automations.py``). The lane's background task runs send no heartbeats, so a killed
``leadflow lane`` leaves its task runs Running for ever; ``crash_stale_lane_runs`` marks
those Running for longer than any lane run takes as Crashed, and announces them with the
event ``leadflow.lane.runs-crashed`` (an automation tells ops). Every lane worker sweeps at
start and then every ``stale / 4`` (``sweep_in_background``), so a killed lane's runs are
Crashed within about ``stale`` and a quarter while any lane worker is alive, or as soon as
one starts again.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

STALE_ENV = "LEADFLOW_LANE_STALE_SECONDS"
STALE_SECONDS = 600.0  # a lane run takes seconds; ten minutes Running is a dead lane's
LANE_TASK_KEY = "speed_to_lead"


def stale_after() -> timedelta:
    raw = os.environ.get(STALE_ENV) or ""
    try:
        seconds = float(raw) if raw else STALE_SECONDS
    except ValueError:
        from leadflow.config import ConfigError

        raise ConfigError(f"environment variable {STALE_ENV}={raw!r} is not a number") from None
    return timedelta(seconds=max(seconds, 1.0))


def crash_stale_lane_runs(
    client: Any, stale: timedelta | None = None, now: datetime | None = None
) -> list[str]:
    """Mark lane task runs (background runs of ``speed_to_lead``, no flow run) that have been
    Running for longer than ``stale`` as Crashed; return their names."""
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterFlowRunId,
        TaskRunFilterStartTime,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    stale = stale or stale_after()
    before = (now or datetime.now(UTC)) - stale
    runs = client.read_task_runs(
        task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING])),
            start_time=TaskRunFilterStartTime(before_=before),
            flow_run_id=TaskRunFilterFlowRunId(is_null_=True),
        ),
        limit=200,
    )
    crashed = []
    message = (
        f"Running for over {int(stale.total_seconds())} s: its lane worker was killed "
        "(marked by a leadflow lane worker); its leads wait for the scheduled pipeline"
    )
    for run in runs:
        if not run.task_key.startswith(f"{LANE_TASK_KEY}-"):
            continue
        result = client.set_task_run_state(run.id, Crashed(message=message))
        if result.state is not None and result.state.is_crashed():
            crashed.append(run.name)
    if crashed:
        announce_crashed(crashed, stale)
    return crashed


def announce_crashed(names: list[str], stale: timedelta, limit: int = 20) -> None:
    from prefect.events import emit_event

    try:
        emit_event(
            event="leadflow.lane.runs-crashed",
            resource={"prefect.resource.id": "leadflow.lane", "prefect.resource.name": "lane"},
            payload={
                "crashed": len(names),
                "names": names[:limit],
                "stale_seconds": int(stale.total_seconds()),
            },
        )
    except Exception as exc:
        log.warning("could not announce %d crashed lane run(s): %s", len(names), exc)


def sweep_once(stale: timedelta | None = None) -> list[str]:
    """One sweep with this process's Prefect API; a failure is logged, never raised."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            crashed = crash_stale_lane_runs(client, stale)
    except Exception as exc:
        log.warning("lane sweep: could not check for a killed lane's runs: %s", exc)
        return []
    if crashed:
        log.warning("lane sweep: %d run(s) of a killed lane marked Crashed", len(crashed))
    return crashed


def sweep_in_background(stale: timedelta | None = None) -> threading.Event:
    """Sweep now and every ``stale / 4`` in a daemon thread; set the returned event to stop."""
    stale = stale or stale_after()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            sweep_once(stale)
            stop.wait(max(stale.total_seconds() / 4, 1.0))

    threading.Thread(target=loop, name="lane-sweep", daemon=True).start()
    return stop
