"""Rules checked before anything moves (issue 19, item 6), from the command line:
``leadflow run`` with a broken rules file of any hop (routing is the last one) exits 2 with
one line naming the file and the field, before the first hop moves a lead: no status
changes, no ledger row, no row anywhere. The flows run as deployments run them are in
flows/test_rules_first.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    BREAKS,
    assert_nothing_moved,
    snapshot,
)


def leadflow(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it, in its own process (its stderr is all of it).
    On the tests' Prefect API, so a run that does start needs no server of its own."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value() or "")
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("broken", list(BREAKS))
def test_run_with_broken_rules_is_one_line_exit_2_and_nothing_moves(
    broken: str, captured: str, shipped_rules: Path
) -> None:
    breaks, named = BREAKS[broken]
    breaks(shipped_rules)
    before = snapshot(captured)

    done = leadflow("run")

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"leadflow: {shipped_rules}/"), lines[0]
    for part in named:
        assert part in lines[0], lines[0]
    assert_nothing_moved(captured, before)
