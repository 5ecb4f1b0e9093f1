"""KPI report flow: the funnel, speed to lead, SLA compliance, sources, recycling, leakage,
waiting work and sales velocity from
the views in ``sql/views``, as Prefect table and markdown artifacts with PNG charts."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, State

from leadflow.kpi import measures as kpi
from leadflow.recycle.rules import load_rules
from leadflow.settings import get_settings
from tasks import hops as hop_tasks
from tasks import kpi as kpi_tasks
from tasks import rules_check


@flow(name="report", flow_run_name=hop_tasks.run_name("report"))
def report(now: datetime | None = None, database_url: str | None = None) -> State:
    """Compute the KPIs as of ``now`` and publish them."""
    settings = get_settings()
    # The leakage report's policy, before anything is computed.
    loaded, refused = rules_check.loaded(load_rules, settings.rules_dir / "recycle.yaml")
    if refused:
        return refused
    policy, _ = loaded
    now = now or datetime.now(UTC)
    views = kpi_tasks.read_views(database_url or settings.database_url)
    figures = kpi.figures(views, now)
    paths = kpi_tasks.charts(figures, views["kpi_speed_to_lead"], settings.var_dir / "reports")
    figures["charts"] = paths
    figures["leakage"] = kpi_tasks.leakage(database_url or settings.database_url, policy, now)
    create_table_artifact(key="kpi-funnel", table=figures["funnel"], description="Funnel")
    create_table_artifact(
        key="kpi-sources", table=figures["source_performance"], description="Sources"
    )
    if figures["sla_compliance"]:
        create_table_artifact(
            key="kpi-sla", table=figures["sla_compliance"], description="SLA compliance"
        )
    create_markdown_artifact(
        key="kpi-report", markdown=kpi.markdown(figures, paths), description="leadflow KPIs"
    )
    median = figures["speed_to_lead"]["capture_to_routed"]["median_s"]
    speed = "n/a (nothing routed yet)" if median is None or median != median else f"{median} s"
    return Completed(
        message=f"KPIs as of {now:%Y-%m-%d %H:%M}: capture -> routed median {speed}, "
        f"leakage {figures['leakage']['total']} leads",
        data=figures,
    )
