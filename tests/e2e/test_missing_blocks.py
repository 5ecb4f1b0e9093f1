"""A block that does not exist, of every kind a command reads, as a person meets it: the
``leadflow`` command as a process answering one line naming the block and ``leadflow
blocks init``, exit 2, before any flow runs. Against the session's Prefect server (as on a
deployed host), and once on Prefect's temporary API (no server: the demo's setting), which
costs a server start per command."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from app.devstack import free_port

from helpers import ROOT

LEADFLOW = str(ROOT / ".venv" / "bin" / "leadflow")


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect home for the module's commands (its database is made once)."""
    return tmp_path_factory.mktemp("prefect-home")


CASES = {
    "notifier": (["route"], {"LEADFLOW_NOTIFIER": "block:nosuch"}, "notifier block"),
    "database": (["route"], {"LEADFLOW_DATABASE_BLOCK": "nosuch"}, "LEADFLOW_DATABASE_BLOCK"),
    "rules folder": (["score"], {"LEADFLOW_RULES_BLOCK": "nosuch"}, "LEADFLOW_RULES_BLOCK"),
    "firmographics": (["enrich", "--provider", "block:nosuch"], {}, "firmographics provider"),
    "scoring rules": (["score", "--rules", "block:nosuch"], {}, "scoring rules block"),
    "capture token": (["serve", "--token-block", "nosuch"], {}, "Secret block"),
}


@pytest.mark.parametrize(
    ("kind", "server"), [(kind, True) for kind in CASES] + [("notifier", False)]
)
def test_a_missing_block_is_one_line_naming_it_and_blocks_init(
    kind, server, tmp_path, prefect_home
):
    from prefect.settings import PREFECT_API_URL

    argv, extra, names = CASES[kind]
    if server:  # the session's server (e2e/conftest.py): no temporary API to start
        extra = {**extra, "PREFECT_API_URL": PREFECT_API_URL.value()}
    if argv[0] == "serve":
        argv = [*argv, "--port", str(free_port())]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LEADFLOW_") and k not in ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL")
    }
    env.update(
        LEADFLOW_HOME=str(tmp_path),
        PREFECT_HOME=str(prefect_home),
        PREFECT_LOGGING_LEVEL="INFO",  # Prefect's default: its own notes would show
        **extra,
    )
    done = subprocess.run(
        [LEADFLOW, *argv], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("leadflow: ") and "Traceback" not in done.stderr
    assert names in lines[0] and "nosuch" in lines[0] and "leadflow blocks init" in lines[0]
    assert done.stdout == ""
