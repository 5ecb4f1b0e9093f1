"""Rules checked before anything moves (issue 19, item 6), as deployments run the flows: a
Failed run whose message is the one line naming the file and the field, before any task
runs, and nothing moved. ``leadflow run`` itself is in e2e/test_rules_first_cli.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    BREAKS,
    _replace,
    assert_nothing_moved,
    snapshot,
)


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> bool:
    """Nothing logged at ERROR (a failed task or flow run logs its traceback there)."""
    return not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_pipeline_flow_fails_before_the_first_hop(
    captured: str, shipped_rules: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As a deployment runs it: a Failed run with the one line; no hop ran."""
    from flows.pipeline import pipeline

    BREAKS["routing-typo-key"][0](shipped_rules)
    before = snapshot(captured)

    state = pipeline(return_state=True)

    assert state.is_failed()
    assert "\n" not in state.message
    assert state.message.startswith(f"ConfigError: {shipped_rules / 'routing.yaml'}: ")
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
    shipped_rules: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    file, old, new, field = FLOW_BREAKS[name]
    _replace(old, new, file)(shipped_rules)
    monkeypatch.setenv("LEADFLOW_HOME", str(tmp_path / "home"))  # the demo's var/ lives there
    before = snapshot(sqlite_url)

    state = _flow(name)(return_state=True)

    assert state.is_failed(), state.message
    assert "\n" not in state.message, state.message
    assert state.message.startswith(f"ConfigError: {shipped_rules / file}: "), state.message
    assert field in state.message, state.message
    assert no_errors_logged(caplog)
    assert snapshot(sqlite_url) == before
    assert not (tmp_path / "home" / "var" / "sample").exists()
