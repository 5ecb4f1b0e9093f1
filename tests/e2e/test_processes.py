"""A SIGKILLed leadflow command leaves nothing running: not Prefect's temporary API server,
not capture's prepare workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import generate

pytestmark = pytest.mark.skipif(not Path("/proc").exists(), reason="Linux /proc")


def children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc's PPid)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            ppid = next(line for line in status.splitlines() if line.startswith("PPid:"))
            parents[int(entry.name)] = int(ppid.split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_killed_command_takes_its_server_and_workers_with_it(tmp_path):
    generate.generate(tmp_path / "sample", leads=60000, seed=3, events_per_lead=0)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API", "PREFECT_SERVER_ALLOW"))
    }
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),  # its own temporary server
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        LEADFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'leadflow.db'}",
        LEADFLOW_PREPARE_WORKERS="2",
        LEADFLOW_BATCH_SIZE="2000",
    )
    command = [sys.executable, "-m", "app.cli"]
    subprocess.run([*command, "db", "upgrade"], env=env, check=True, capture_output=True)
    run = subprocess.Popen(
        [*command, "ingest", str(tmp_path / "sample" / "leads.csv"), "--source", "t"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: set[int] = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and run.poll() is None:
        seen |= children(run.pid)
        if len(seen) >= 3:  # the watchdog, the server, and at least one worker
            break
        time.sleep(0.2)
    assert run.poll() is None and len(seen) >= 3, "the command ended before starting its helpers"
    time.sleep(1)
    seen |= children(run.pid)
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(p) for p in seen):
        time.sleep(0.2)
    assert not [p for p in seen if alive(p)]
