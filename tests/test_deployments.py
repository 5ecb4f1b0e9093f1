"""prefect.yaml deploys against a real Prefect API."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.flow
def test_flow_run_names_say_what_ran(database_url, tmp_path):
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client

    from flows.capture import capture
    from flows.nurture import nurture

    path = tmp_path / "webinar-leads.csv"
    path.write_text("email\nweb@x.com\n")
    captured = capture(path=str(path), source="webinar", return_state=True)
    ticked = nurture(now=datetime(2026, 11, 22, 10, 15, tzinfo=UTC), return_state=True)
    with get_client(sync_client=True) as client:
        names = [client.read_flow_run(s.state_details.flow_run_id).name for s in (captured, ticked)]
    assert names == ["capture-webinar-leads.csv", "nurture-2026-11-22T10:15"]


@pytest.mark.flow
def test_blocks_register_init_and_missing_block_messages(monkeypatch, tmp_path):
    import uuid

    from prefect.settings import PREFECT_API_URL

    from blocks import registry
    from leadflow.settings import get_settings

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    for name in ("DATABASE_URL", "SMTP_HOST", "WEBHOOK_URL", "FIRMOGRAPHICS_URL", "RULES_DIR"):
        monkeypatch.delenv(f"LEADFLOW_{name}", raising=False)
    assert "leadflow-database" in registry.register()
    token = uuid.uuid4().hex
    monkeypatch.setenv("LEADFLOW_CAPTURE_TOKEN", token)
    monkeypatch.setenv("LEADFLOW_SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("LEADFLOW_SMTP_PASSWORD", "pw-not-shown")
    monkeypatch.setenv("LEADFLOW_RULES_DIR", str(tmp_path))
    report = registry.init(overwrite=True)
    assert report["leadflow-capture-token"].startswith("saved")
    assert report["leadflow-smtp"] == "saved (Leadflow SMTP Notifier)"
    assert report["leadflow"] == "skipped (LEADFLOW_DATABASE_URL is not set)"
    assert registry.init()["leadflow-smtp"].startswith("exists")
    # The token comes from the Secret block, not the environment, once a server is in use.
    monkeypatch.delenv("LEADFLOW_CAPTURE_TOKEN")
    assert registry.capture_token(None)[0] == token
    value, missing = registry.capture_token("no-such-block")
    assert value is None and "no-such-block" in missing and "leadflow blocks init" in missing
    # Workers find the rules folder through its block.
    monkeypatch.delenv("LEADFLOW_RULES_DIR")
    monkeypatch.setenv("LEADFLOW_RULES_BLOCK", "leadflow-rules")
    assert get_settings().rules_dir == tmp_path
    monkeypatch.setenv("LEADFLOW_RULES_BLOCK", "nope")
    with pytest.raises(ValueError, match=r"LEADFLOW_RULES_BLOCK='nope'.*leadflow blocks init"):
        assert get_settings().rules_dir is None  # raises first
