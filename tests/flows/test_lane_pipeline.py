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


@pytest.mark.flow
def test_a_lane_task_run_is_named_after_the_leads_it_took_and_its_rows_carry_its_id(
    database_url, engine
):
    from prefect.client.orchestration import get_client

    from tasks.lane import describe, hand, speed_to_lead

    client = app_for(database_url)  # no hand-off: the test hands them
    ids = [
        client.post("/leads", json={"email": f"lane{n}@acme{n}.com", **HOT}, headers=AUTH).json()[
            "lead_id"
        ]
        for n in range(2)
    ]
    hand([ids[1]])  # handed for a run still queued: the first run to start takes it too
    state = speed_to_lead(lead_ids=[ids[0]], return_state=True)
    summary = state.result()
    run_id = state.state_details.task_run_id
    assert summary["lead_ids"] == ids
    with get_client(sync_client=True) as prefect:
        assert prefect.read_task_run(run_id).name == f"lane-2-leads-{ids[0]}-to-{ids[1]}"
    said = describe(summary)
    assert said.startswith(f"lane: 2 lead(s) (2-leads-{ids[0]}-to-{ids[1]}, 1 handed")
    assert "route 2 (routed 2)" in said and not said.endswith("'s")
    with engine.connect() as conn:
        events = conn.execute(
            select(t.lead_events.c.flow_run_id).where(
                t.lead_events.c.lead_id.in_(ids), t.lead_events.c.actor != "capture"
            )
        ).scalars()
        assigned = conn.execute(
            select(t.assignments.c.flow_run_id).where(t.assignments.c.lead_id.in_(ids))
        ).scalars()
        assert set(events) == {str(run_id)} and list(assigned) == [str(run_id)] * 2
    # Handed the same lead again (a duplicate hand-off, a retry): nothing to do, and its
    # name says so.
    late = speed_to_lead(lead_ids=[ids[1]], return_state=True)
    assert late.result()["lead_ids"] == [ids[1]]
    assert all(done["claimed"] == 0 for done in late.result()["hops"].values())
    with get_client(sync_client=True) as prefect:
        name = prefect.read_task_run(late.state_details.task_run_id).name
    assert name == f"lane-lead-{ids[1]}-already-done"
    taken = describe({"handed": 1, "leads": 0, "hops": {}, "seconds": 0.001})
    assert taken.endswith("were taken by an earlier lane run of this worker")
