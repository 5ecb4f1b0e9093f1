"""prefect.yaml deploys against a real Prefect API (``prefect deploy --all``, a process)."""

import contextlib
import os
import re
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
    # No LEADFLOW_HOME: nothing in prefect.yaml is filled in from the deploying host.
    env = {k: v for k, v in os.environ.items() if k != "LEADFLOW_HOME"}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
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
    # Where the code is does not matter: module entrypoints (the installed package's), and
    # the one pull step runs on the worker (its own LEADFLOW_HOME); prefect deploy adds no
    # set_working_directory of this checkout.
    for deployment in deployments.values():
        assert re.fullmatch(r"flows\.\w+\.\w+", deployment.entrypoint), deployment.entrypoint
        assert deployment.pull_steps == [{"app.deploy_steps.enter_home": {}}], deployment.name
        assert str(ROOT) not in str(deployment.pull_steps) + str(deployment.path or "")
    assert deployments["pipeline"].entrypoint == "flows.pipeline.pipeline"
    pipeline = deployments["pipeline"]
    assert pipeline.global_concurrency_limit.limit == 1
    assert pipeline.concurrency_options.collision_strategy.value == "ENQUEUE"
    # A parameter of the wrong type is refused when the run is created.
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client, pytest.raises(PrefectHTTPStatusError):
        client.create_flow_run_from_deployment(
            deployments["rescore"].id, parameters={"dry_run": "not a boolean"}
        )
