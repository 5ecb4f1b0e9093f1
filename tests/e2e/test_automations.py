"""Ops are told, not only shown (issue 21): leadflow's Prefect automations on a real
``prefect server start``, notifying a webhook on loopback through the ``leadflow-ops``
block. Applying them twice changes nothing; a capture whose gate refuses its file (a
deployment run on a process worker) produces the gate's message naming the hop and the
failed run's message naming the deployment and run; a scheduled deployment that never
completes is reported; a flow run whose process is SIGKILLed ends Crashed once its
heartbeats stop (heartbeats every 30 s, Prefect's minimum; the automation's window 45 s).

About a minute and a half, most of it the heartbeat window.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from app.devstack import bin_path, prefect_server
from leadflow import store

from helpers import HEADER, until, write

HEARTBEAT = 30  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY's minimum
MISSED = 1.5  # the window: 45 s of silence (3 periods in production)


@pytest.fixture(autouse=True)
def _prefect_server() -> None:
    """Overrides e2e/conftest.py's: everything here talks to the stack's own server."""


def run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


PROBE = """
import time
from prefect import flow

@flow(name="zombie-probe")
def probe():
    time.sleep(600)

probe()
"""


def _messages(httpserver: HTTPServer) -> list[dict]:
    return [json.loads(request.get_data()) for request, _ in list(httpserver.log)]


def _deploy(client, flow: str, name: str, entrypoint: str, pool: str, home: Path, **kw) -> object:
    return client.create_deployment(
        client.create_flow_from_name(flow),
        name,
        entrypoint=entrypoint,
        work_pool_name=pool,
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(home)}}],
        **kw,
    )


def test_automations_tell_ops_and_crash_killed_runs(tmp_path: Path, httpserver: HTTPServer):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.schedules import IntervalSchedule

    from app.automations import create_automations

    httpserver.expect_request("/ops", method="POST").respond_with_data("ok")
    home = tmp_path / "home"
    home.mkdir()
    database = f"sqlite:///{home / 'leadflow.db'}"
    store.upgrade(database)
    env = {
        "LEADFLOW_HOME": str(home),
        "LEADFLOW_DATABASE_URL": database,
        "LEADFLOW_GX_DIR": str(home / "gx"),
        "LEADFLOW_DATA_DOCS_DIR": str(home / "docs"),
        "LEADFLOW_OPS_WEBHOOK_URL": httpserver.url_for("/ops"),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    with prefect_server(tmp_path / "stack", env) as stack:
        env, api = stack.env, stack.env["PREFECT_API_URL"]
        leadflow = bin_path("leadflow")
        saved = run([leadflow, "blocks", "init"], env)
        assert "leadflow-ops" in saved, saved
        with SyncPrefectClient(api) as client:
            client.create_work_pool(WorkPoolCreate(name="leadflow", type="process"))
            client.create_work_pool(WorkPoolCreate(name="idle", type="process"))  # no worker
            capture = _deploy(
                client,
                "capture",
                "capture-files",
                "flows.capture.capture",
                "leadflow",
                home,
                parameters={"path": str(home / "bad.csv"), "source": "e2e"},
            )
            _deploy(
                client,
                "report",
                "report",
                "flows.report.report",
                "idle",
                home,
                schedules=[DeploymentScheduleCreate(schedule=IntervalSchedule(interval=6))],
            )

        # (a) Applied by the command, then again by the function: nothing changes.
        first = run(
            [
                leadflow,
                "automations",
                "apply",
                "--json",
                "--heartbeat-seconds",
                str(HEARTBEAT),
                "--missed-heartbeats",
                str(MISSED),
            ],
            env,
        )
        applied = json.loads(first)["applied"]
        assert all(line.startswith("created ") for line in applied), applied
        names = {line.removeprefix("created ") for line in applied}
        assert {
            "leadflow: run failed or crashed",
            "leadflow: gate refused a batch",
            "leadflow: outbox dead letters",
            "leadflow: lane runs crashed",
            "leadflow: no completed run of report",
            "leadflow: crash runs without heartbeats",
        } == names  # capture-files has no schedule: nothing to be late for
        with SyncPrefectClient(api) as client:
            before = {a.name: a.id for a in client.read_automations()}
            again = create_automations(
                client, heartbeat_seconds=HEARTBEAT, missed_heartbeats=MISSED
            )
            after = {a.name: a.id for a in client.read_automations()}
        assert sorted(again) == sorted(f"kept {name}" for name in names), again
        assert after == before and len(after) == len(names)

        # A flow run whose process will be killed, and a capture deployment run whose file
        # the gate refuses, on a process worker.
        probe = tmp_path / "probe.py"
        probe.write_text(PROBE)
        victim = subprocess.Popen(
            [sys.executable, str(probe)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        write(home / "bad.csv", HEADER + "".join(f"bad{i},A,,,,,,,,\n" for i in range(9)))
        stack.start("worker", [bin_path("prefect"), "worker", "start", "--pool", "leadflow"])
        with SyncPrefectClient(api) as client:
            flow_run = client.create_flow_run_from_deployment(capture)

            def probe_running():
                runs = client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["zombie-probe"]))
                )
                return next((r for r in runs if r.state and r.state.is_running()), None)

            zombie = until(probe_running, 60, "the probe flow run to be Running")
            # Its process dies as on an OOM kill: no exit handler, no Crashed state sent.
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(10)
            killed = time.monotonic()

            def finished():
                state = client.read_flow_run(flow_run.id).state
                return state if state and state.is_final() else None

            state = until(finished, 120, "the capture run", 1)
            run_name = client.read_flow_run(flow_run.id).name
        assert state.is_failed(), (state.message, stack.log("worker")[-3000:])

        def message(word: str):
            return next((m for m in _messages(httpserver) if word in m["subject"]), None)

        gate = until(lambda: message("gate refused"), 30, "the gate's message")
        assert gate["subject"] == "leadflow: the capture gate refused a batch", gate
        assert "Gate capture (suite captured) refused 1 batch(es)" in gate["body"], gate
        assert "quarantine_rate_within_limit" in gate["body"], gate
        assert "9 of 9 rows quarantined" in gate["body"] and run_name in gate["body"], gate
        assert "leadflow quarantine list --hop capture" in gate["body"], gate
        failed = until(lambda: message(" Failed"), 30, "the failed run's message")
        assert failed["subject"] == f"leadflow: capture-files run {run_name} Failed", failed
        assert "Deployment capture/capture-files" in failed["body"], failed
        assert state.message.split("(")[0].strip() in failed["body"], failed
        assert f"runs/flow-run/{flow_run.id}" in failed["body"], failed  # the UI link
        assert failed["text"] == f"{failed['subject']}\n{failed['body']}"

        # (c) The report deployment is scheduled every 6 s but has no worker: it is late.
        late = until(lambda: message("no completed report run"), 40, "the stale schedule's")
        assert "scheduled every 6 s" in late["body"] and "pool idle" in late["body"], late
        assert not any("@" in json.dumps(m) for m in _messages(httpserver))  # no address

        # (d) The killed run: Crashed once its heartbeats stopped, by the automation.
        with SyncPrefectClient(api) as client:

            def crashed():
                state = client.read_flow_run(zombie.id).state
                return state if state and state.is_crashed() else None

            window = HEARTBEAT * MISSED
            state = until(crashed, window + 40, "the killed run to be Crashed", 1)
        waited = time.monotonic() - killed
        assert "no heartbeat for 45 s" in state.message, state.message
        print(f"killed run Crashed {waited:.1f} s after SIGKILL (window {window:.0f} s)")
        assert waited <= window + 40
