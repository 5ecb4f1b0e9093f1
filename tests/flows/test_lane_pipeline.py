"""A lead the speed-to-lead lane missed is taken by the pipeline flow, once (the lane itself
is in store/test_lane.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from leadflow import tables as t
from tasks.lane import run_lane

from helpers import AUTH, HOT, app_for


@pytest.mark.flow
def test_a_lead_the_lane_missed_is_taken_by_the_pipeline_once(database_url, engine):
    from flows.pipeline import pipeline

    client = app_for(database_url)  # no hand-off: the lane's worker is down
    missed = client.post("/leads", json={"email": "late@acme.com", **HOT}, headers=AUTH).json()[
        "lead_id"
    ]
    state = pipeline(database_url=database_url, return_state=True)
    assert state.is_completed(), state.message
    with engine.connect() as conn:
        assert (
            conn.execute(select(t.leads.c.status).where(t.leads.c.id == missed)).scalar_one()
            == "routed"
        )
    # The lane handed it late (the worker came back): it does nothing twice.
    late = run_lane([missed], database_url)
    assert all(h["claimed"] == 0 for h in late["hops"].values())
    with engine.connect() as conn:
        routed = conn.execute(
            select(func.count()).where(
                t.lead_events.c.lead_id == missed, t.lead_events.c.to_status == "routed"
            )
        ).scalar_one()
    assert routed == 1
