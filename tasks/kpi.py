"""The kpi concern's Prefect layer: its tasks, events and artifacts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from leadflow import store
from leadflow.kpi import measures as measures_impl
from leadflow.kpi.leakage import find_leaks, markdown
from leadflow.recycle.rules import RecycleRules


@task(name="read-kpi-views", cache_policy=NO_CACHE)
def read_views(database_url: str) -> dict[str, pd.DataFrame]:
    """Every KPI view as a DataFrame."""
    with store.get_engine(database_url).connect() as conn:
        return measures_impl.read_views(conn)


@task(name="kpi-charts", cache_policy=NO_CACHE)
def charts(report: dict[str, Any], speed: pd.DataFrame, folder: Path) -> dict[str, str]:
    """PNG charts: the funnel, and the distribution of capture -> routed seconds."""
    return measures_impl.charts(report, speed, folder)


@task(name="leakage", cache_policy=NO_CACHE)
def leakage(
    database_url: str, rules: RecycleRules, now: datetime, limit: int = 200
) -> dict[str, Any]:
    """The leakage report, published as a table and a markdown artifact."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    with store.get_engine(database_url).connect() as conn:
        leaks = find_leaks(conn, rules, now, limit)
    create_table_artifact(
        key="leakage",
        table=[{"kind": k, "leads": v} for k, v in leaks["counts"].items()]
        + [
            {"kind": f"{r['kind']}: lead {r['lead_id']}", "leads": r["why"]}
            for r in leaks["leads"][:50]
        ],
        description=f"Leads nobody is working, as of {now:%Y-%m-%d %H:%M}",
    )
    create_markdown_artifact(key="leakage-report", markdown=markdown(leaks), description="Leakage")
    return leaks
