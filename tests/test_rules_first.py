"""Rules checked before anything moves (issue 19, item 6).

``leadflow run`` with a broken rules file of any hop (routing is the last one) exits 2 with
one line naming the file and the field, before the first hop moves a lead: no status
changes, no ledger row, no row anywhere. Run as deployments, the flows fail the same way:
a Failed run whose message is that line, before any task runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from leadflow import store
from leadflow import tables as t
from tasks import rules_check

from conftest import write
from helpers import ingest

RULES = Path(__file__).resolve().parents[1] / "rules"


def _replace(old: str, new: str, file: str) -> Callable[[Path], None]:
    def breaks(folder: Path) -> None:
        path = folder / file
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{file} no longer has {old!r}: update the test"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return breaks


def _remove(file: str) -> Callable[[Path], None]:
    return lambda folder: (folder / file).unlink()


# How each rules file is broken, and what the one line must name (file, field or value).
BREAKS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "routing-typo-key": (
        _replace("\nfallback:", "\nfallbak:", "routing.yaml"),
        ("routing.yaml: ", "fallbak: Extra inputs are not permitted"),
    ),
    "routing-pool-without-rep": (
        _replace("  - name: latam\n", "  - name: latam\n  - name: nordics\n", "routing.yaml"),
        ("routing.yaml: ", "pools[nordics]: no rep is in this pool"),
    ),
    "scoring-typo-key": (
        _replace("points: 20", "pointz: 20", "scoring.yaml"),
        ("scoring.yaml: ", "fit[0].pointz: Extra inputs are not permitted (value: 20)"),
    ),
    "routing-missing": (_remove("routing.yaml"), ("routing.yaml: file not found",)),
}


@pytest.fixture
def rules_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped rules, used by every run of the test (LEADFLOW_RULES_DIR)."""
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    monkeypatch.setenv("LEADFLOW_RULES_DIR", str(folder))
    return folder


@pytest.fixture
def captured(database_url: str, rules_dir: Path, tmp_path: Path) -> str:
    """Leads waiting in ``captured``: what a run would move first."""
    rows = "".join(
        f"p{n}@company{n % 4}.com,P{n},Lead,Company {n % 4},{('US', 'DE', 'JP')[n % 3]}\n"
        for n in range(24)
    )
    path = write(tmp_path / "leads.csv", "email,first_name,last_name,company,country\n" + rows)
    state, data = ingest(path, source="web")
    assert state.is_completed() and data["inserted"] == 24, data
    return database_url


def snapshot(url: str) -> dict[str, Any]:
    """Every table's row count, and each lead's status."""
    with store.get_engine(url).connect() as conn:
        counts = {
            name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in t.metadata.tables.items()
        }
        statuses = conn.execute(select(t.leads.c.id, t.leads.c.status).order_by(t.leads.c.id)).all()
    return {"rows": counts, "statuses": [tuple(row) for row in statuses]}


def assert_nothing_moved(url: str, before: dict[str, Any]) -> None:
    after = snapshot(url)
    assert {status for _, status in after["statuses"]} == {"captured"}
    assert after["rows"]["lead_events"] == before["rows"]["lead_events"]  # no ledger row
    assert after == before


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
    broken: str, captured: str, rules_dir: Path
) -> None:
    breaks, named = BREAKS[broken]
    breaks(rules_dir)
    before = snapshot(captured)

    done = leadflow("run")

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"leadflow: {rules_dir}/"), lines[0]
    for part in named:
        assert part in lines[0], lines[0]
    assert_nothing_moved(captured, before)


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> bool:
    """Nothing logged at ERROR (a failed task or flow run logs its traceback there)."""
    return not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_pipeline_flow_fails_before_the_first_hop(
    captured: str, rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As a deployment runs it: a Failed run with the one line; no hop ran."""
    from flows.pipeline import pipeline

    BREAKS["routing-typo-key"][0](rules_dir)
    before = snapshot(captured)

    state = pipeline(return_state=True)

    assert state.is_failed()
    assert "\n" not in state.message
    assert state.message.startswith(f"ConfigError: {rules_dir / 'routing.yaml'}: ")
    assert "fallbak: Extra inputs are not permitted" in state.message
    assert no_errors_logged(caplog)
    assert_nothing_moved(captured, before)


def _flow(name: str) -> Callable[..., Any]:
    from app import demo
    from flows import enrich, nurture, pipeline, recycle, report, route, score, sla

    modules = {
        "pipeline": pipeline,
        "demo": demo,
        "enrich": enrich,
        "score": score,
        "route": route,
        "sla": sla,
        "nurture": nurture,
        "recycle": recycle,
        "report": report,
    }
    return getattr(modules[name], name)


# Each deployed flow, and a file it reads that the flows before it in the list do not check.
FLOW_BREAKS = {
    "enrich": ("enrichment.yaml", "provider: none", "provider: nowhere", "provider: Value error"),
    "score": ("scoring.yaml", "points: 20", "pointz: 20", "fit[0].pointz"),
    "route": ("routing.yaml", "\nfallback:", "\nfallbak:", "fallbak"),
    "sla": ("sla.yaml", "\npolicies:", "\npolicys:", "policys"),
    "nurture": ("cadences.yaml", "\ncadences:", "\ncadence:", "cadence"),
    "recycle": ("recycle.yaml", "\nafter_max:", "\naftermax:", "aftermax"),
    "report": ("recycle.yaml", "\nafter_max:", "\naftermax:", "aftermax"),
    # The demo reads every file: its check stops on the SLA rules before sample data exists.
    "demo": ("sla.yaml", "\npolicies:", "\npolicys:", "policys"),
}


@pytest.mark.parametrize("name", list(FLOW_BREAKS))
def test_each_flow_refuses_its_broken_rules_in_one_line(
    name: str,
    sqlite_url: str,
    rules_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    file, old, new, field = FLOW_BREAKS[name]
    _replace(old, new, file)(rules_dir)
    monkeypatch.setenv("LEADFLOW_HOME", str(tmp_path / "home"))  # the demo's var/ lives there
    before = snapshot(sqlite_url)

    state = _flow(name)(return_state=True)

    assert state.is_failed(), state.message
    assert "\n" not in state.message, state.message
    assert state.message.startswith(f"ConfigError: {rules_dir / file}: "), state.message
    assert field in state.message, state.message
    assert no_errors_logged(caplog)
    assert snapshot(sqlite_url) == before
    assert not (tmp_path / "home" / "var" / "sample").exists()


@pytest.mark.unit
def test_one_line_keeps_the_file_once_and_every_problem() -> None:
    message = (
        "rules/routing.yaml: 2 problem(s)\n"
        "  rules/routing.yaml: fallback: Field required (value: dict)\n"
        "  rules/routing.yaml: fallbak: Extra inputs are not permitted (value: dict)"
    )
    assert rules_check.one_line(message) == (
        "rules/routing.yaml: fallback: Field required (value: dict); "
        "fallbak: Extra inputs are not permitted (value: dict)"
    )
    assert rules_check.one_line("rules/x.yaml: file not found") == "rules/x.yaml: file not found"
