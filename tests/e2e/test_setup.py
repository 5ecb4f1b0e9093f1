"""`leadflow setup` as a process (issue 21): on a fresh data folder it migrates the database
and creates the drop folders; with a real ``prefect server start`` it also creates the blocks
and the ``leadflow`` work pool; run again, it keeps everything and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from app.devstack import bin_path, free_port, prefect_server
from leadflow import store

NO_SERVER = "skipped (no Prefect server: PREFECT_API_URL is not set)"


@pytest.fixture(autouse=True)
def _prefect_server(no_prefect_api: None) -> None:
    """Overrides e2e/conftest.py's: these tests start their own server, or none."""


def setup(env: dict[str, str], *options: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [bin_path("leadflow"), "setup", *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == code, done.stdout + done.stderr
    return done


def fresh_env(tmp_path: Path) -> dict[str, str]:
    """This environment without any Prefect or leadflow setting, a new data folder and a
    Prefect home with no profile: no server configured anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LEADFLOW_"))}
    env.update(
        {
            "LEADFLOW_HOME": str(tmp_path / "home"),
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    return env


def test_setup_without_a_server_migrates_and_creates_the_drop_folders_idempotently(tmp_path):
    env = fresh_env(tmp_path)
    inbox = tmp_path / "home" / "var" / "inbox"
    first = setup(env)
    database = tmp_path / "home" / "var" / "leadflow.db"
    revision = store.current_revision(f"sqlite:///{database}")
    assert revision is not None
    assert first.stdout.splitlines() == [
        f"database: migrated from empty to revision {revision}: sqlite:///{database}",
        f"drop folders: created leads, events, activities in {inbox}",
        f"blocks: {NO_SERVER}",
        f"work pool: {NO_SERVER}",
        f"deployments: {NO_SERVER}",
        f"automations: {NO_SERVER}",
    ]
    assert sorted(p.name for p in inbox.iterdir()) == ["activities", "events", "leads"]
    (inbox / "leads" / "kept.csv").write_text("email\na@x.com\n")

    again = json.loads(setup(env, "--json").stdout)
    assert again["ok"] is True and again["prefect_api"] is None
    steps = {s["step"]: s for s in again["steps"]}
    assert steps["database"]["result"] == f"at head revision {revision}: sqlite:///{database}"
    assert steps["drop folders"]["created"] == []
    assert steps["blocks"]["result"] == NO_SERVER and steps["work pool"]["skipped"] is True
    assert (inbox / "leads" / "kept.csv").read_text() == "email\na@x.com\n"
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()  # no temporary server


def test_a_server_that_does_not_answer_is_one_line_and_exit_2(tmp_path):
    env = fresh_env(tmp_path)
    api = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env.update({"PREFECT_API_URL": api, "LEADFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    done = setup(env, code=2)
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["database", "drop folders"]
    assert done.stderr == (
        f"leadflow: setup step 'blocks' failed: the Prefect API at {api} does not answer "
        "(ConnectError); start it (`prefect server start`), or unset PREFECT_API_URL to set "
        "up without it; fix it and run `leadflow setup` again\n"
    )


def test_setup_with_a_server_creates_blocks_and_the_work_pool_and_keeps_them(tmp_path):
    from prefect.client.orchestration import SyncPrefectClient

    env = fresh_env(tmp_path)
    env.update(
        {
            "LEADFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'deployed.db'}",
            "LEADFLOW_CAPTURE_TOKEN": "setup-e2e-token",
            "LEADFLOW_SMTP_HOST": "smtp.example.com",
            "LEADFLOW_SMTP_PASSWORD": "never-printed",
        }
    )
    with prefect_server(tmp_path / "stack", env) as running:
        first = setup(running.env)
        lines = dict(line.split(": ", 1) for line in first.stdout.splitlines())
        assert lines["work pool"].startswith("created 'leadflow' (type process)")
        assert "saved leadflow, leadflow-capture-token, leadflow-smtp" in lines["blocks"]
        assert "never-printed" not in first.stdout + first.stderr
        assert lines["deployments"].startswith("deployed 15 from "), lines["deployments"]
        assert "created" in lines["automations"], lines["automations"]
        assert "no deployments yet" not in lines["automations"]
        with SyncPrefectClient(running.env["PREFECT_API_URL"]) as client:
            pool = client.read_work_pool("leadflow")
            blocks = {b.name: b.id for b in client.read_block_documents() if b.name}
        assert pool.type == "process"
        assert {"leadflow", "leadflow-capture-token", "leadflow-smtp"} <= set(blocks)

        again = json.loads(setup(running.env, "--json").stdout)
        steps = {s["step"]: s for s in again["steps"]}
        assert steps["work pool"]["created"] is False
        assert steps["work pool"]["result"] == "'leadflow' exists (type process, kept)"
        assert steps["blocks"]["blocks"]["leadflow-smtp"].startswith("exists (kept")
        assert len(steps["deployments"]["deployed"]) == 15  # deployed again: updated in place
        with SyncPrefectClient(running.env["PREFECT_API_URL"]) as client:
            assert len(client.read_deployments()) == 15
        made = steps["automations"]["automations"]
        assert made and all(line.startswith(("kept", "skipped")) for line in made), made
        with SyncPrefectClient(running.env["PREFECT_API_URL"]) as client:
            assert client.read_work_pool("leadflow").id == pool.id
            after = {b.name: b.id for b in client.read_block_documents() if b.name}
        assert after == blocks
    assert store.current_revision(env["LEADFLOW_DATABASE_URL"]) == steps["database"]["revision"]
