"""The KPI report over the real views (SQLite and PostgreSQL) after leads were captured,
scored and routed (the pure figures are in unit/report/test_kpi.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from helpers import mqls, run_route

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def test_report_over_the_views(database_url, tmp_path):

    from flows.report import report
    from leadflow import store

    mqls(store.get_engine(database_url), ["US", "US", "DE"])
    run_route(database_url, tmp_path)
    state = report(now=NOW, database_url=database_url, return_state=True)
    data = state.result()
    assert state.is_completed()
    funnel = {r["stage"]: r["leads"] for r in data["funnel"]}
    assert (funnel["captured"], funnel["mql"], funnel["routed"]) == (3, 3, 3)
    assert data["speed_to_lead"]["capture_to_routed"]["leads"] == 3
    assert [r["status"] for r in data["waiting"]] == ["routed"]
    assert all(p.endswith(".png") for p in data["charts"].values())
