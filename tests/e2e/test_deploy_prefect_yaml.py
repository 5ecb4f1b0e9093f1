"""prefect.yaml deploys against a real Prefect API (``prefect deploy --all``, a process)."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT


@pytest.mark.flow
def test_every_deployment_in_prefect_yaml_deploys():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client, contextlib.suppress(Exception):
        client.create_work_pool(WorkPoolCreate(name="leadflow", type="process"))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "LEADFLOW_HOME": str(ROOT)}
    prefect = Path(sys.executable).with_name("prefect")
    done = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert {"pipeline", "capture-files", "capture-events", "rescore", "backtest"} <= set(
        deployments
    )
    assert {"route", "route-dry-run", "report", "learn", "sla", "capture-activities"} <= set(
        deployments
    )
    assert {"nurture", "recycle"} <= set(deployments)
    assert deployments["nurture"].schedules[0].schedule.cron == "*/15 * * * *"
    assert all(d.enforce_parameter_schema for d in deployments.values())
    pipeline = deployments["pipeline"]
    assert pipeline.global_concurrency_limit.limit == 1
    assert pipeline.concurrency_options.collision_strategy.value == "ENQUEUE"
    # A parameter of the wrong type is refused when the run is created.
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client, pytest.raises(PrefectHTTPStatusError):
        client.create_flow_run_from_deployment(
            deployments["rescore"].id, parameters={"dry_run": "not a boolean"}
        )
