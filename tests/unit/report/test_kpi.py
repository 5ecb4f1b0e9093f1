"""KPIs: the pure figures on a few rows (the report over the real views is in
flows/test_report.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from leadflow.kpi import measures as kpi

NOW = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.mark.unit
def test_funnel_conversion_and_speed_quantiles():
    reached = pd.DataFrame(
        {"stage": ["captured", "enriched", "mql", "routed"], "reached": [10, 10, 4, 3]}
    )
    rows = {r["stage"]: r for r in kpi.funnel(reached)}
    assert rows["mql"]["conversion_from_previous"] == 0.4
    assert rows["routed"]["conversion_from_previous"] == 0.75 and rows["won"]["leads"] == 0
    t0 = pd.Timestamp("2026-11-01T10:00:00Z")
    speed = pd.DataFrame(
        {
            "captured_at": [t0] * 10,
            "routed_at": [t0 + pd.Timedelta(seconds=s) for s in range(1, 11)],
            "accepted_at": [t0 + pd.Timedelta(minutes=30)] * 2 + [pd.NaT] * 8,
        }
    )
    figures = kpi.speed_to_lead(speed)
    assert figures["capture_to_routed"] == {"leads": 10, "median_s": 5.5, "p90_s": 9.1}
    assert figures["routed_to_accepted"]["leads"] == 2


@pytest.mark.unit
def test_sales_velocity_from_deals():
    t0 = pd.Timestamp("2026-10-01T00:00:00Z")
    deals = pd.DataFrame(
        {
            "status": ["qualified", "qualified", "won", "won", "lost"],
            "attributes": [None, None, '{"budget": 10000}', '{"budget": "30000"}', None],
            "captured_at": [t0] * 5,
            "closed_at": [None, None, t0 + pd.Timedelta(days=10), t0 + pd.Timedelta(days=30), t0],
        }
    )
    velocity = kpi.sales_velocity(deals)
    # 2 open x 2/3 won x 20,000 average / 20 days = 1,333.33 per day
    assert velocity == {
        "open_opportunities": 2,
        "win_rate": 0.6667,
        "average_deal_value": 20000.0,
        "cycle_days": 20.0,
        "velocity_per_day": 1333.4,
    }


@pytest.mark.unit
def test_first_touch_sla_compliance_and_recycle_rates():
    t0 = pd.Timestamp("2026-11-02T09:00:00Z")
    speed = pd.DataFrame(
        {
            "lead_id": [1, 2, 3],
            "captured_at": [t0] * 3,
            "routed_at": [t0 + pd.Timedelta(seconds=2)] * 3,
            "accepted_at": [pd.NaT] * 3,
        }
    )
    touches = pd.DataFrame(
        {
            "lead_id": [1, 2, 3],
            # lead 3 was called before it was routed: not a response to routing, left out
            "first_touch_at": [t0 + pd.Timedelta(minutes=5), t0 + pd.Timedelta(minutes=15), t0],
        }
    )
    figures = kpi.speed_to_lead(speed, touches)
    assert figures["routed_to_first_touch"] == {"leads": 2, "median_s": 598.0, "p90_s": 838.0}
    assert figures["capture_to_first_touch"]["median_s"] == 600.0
    compliance = pd.DataFrame(
        {
            "policy": ["first-touch", "first-touch"],
            "rep": ["ada", "bo"],
            "timers": [4, 2],
            "met_on_time": [2, 0],
            "met_late": [1, 0],
            "closed_unmet": [0, 1],
            "still_open": [1, 1],
            "breached": [1, 1],
            "mean_business_minutes": [42.0, float("nan")],
        }
    )
    rows = kpi.sla_compliance(compliance)
    assert rows[0]["compliance"] == round(2 / 3, 4) and rows[1]["compliance"] == 0.0
    assert rows[1]["mean_business_minutes"] is None
    recycled = pd.DataFrame({"from_status": ["accepted"], "recycled": [3], "leads": [2]})
    funnel_rows = [{"stage": "accepted", "leads": 8}]
    assert kpi.recycle_rates(recycled, funnel_rows) == [
        {"from_status": "accepted", "recycled": 3, "leads": 2, "rate": 0.25}
    ]
    markdown = kpi.markdown(
        {
            "as_of": "now",
            "funnel": [],
            "speed_to_lead": figures,
            "sla_compliance": rows,
            "source_performance": [],
            "recycling": kpi.recycle_rates(recycled, funnel_rows),
            "waiting": [],
            "sales_velocity": kpi.sales_velocity(
                pd.DataFrame(columns=["status", "attributes", "captured_at", "closed_at"])
            ),
        }
    )
    assert "| first-touch | ada | 4 | 2 | 1 | 0 | 1 | 1 | 66.7% |" in markdown
    assert "| accepted | 2 | 25.0% |" in markdown
