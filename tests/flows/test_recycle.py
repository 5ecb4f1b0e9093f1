"""Recycling on SQLite and PostgreSQL: stalled leads (never accepted, not now, no activity,
lost for a recyclable reason) go back to nurture with a reason code, owners released, scores
decayed, counts kept; past the maximum they are disqualified; a rep who rejected a lead does
not get it back within the cool-down. The leakage report is in store/test_leakage.py."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from leadflow import store
from leadflow import tables as t
from leadflow.routing import store as routing_store

from helpers import NOW, move, mqls, run_route, table, write
from helpers import RECYCLE_POLICY as POLICY

pytestmark = pytest.mark.flow


def activity(conn, lead: int, rep: int | None, kind: str, at, reason: str | None = None) -> None:
    conn.execute(
        t.activities.insert().values(
            lead_id=lead,
            rep_id=None if rep is None else int(rep),
            activity_type=kind,
            occurred_at=at,
            reason=reason,
            activity_key=f"{lead}:{kind}:{at.isoformat()}",
            recorded_at=at,
        )
    )


def recycle(database_url: str, rules: str, now) -> dict:
    from flows.recycle import recycle as flow

    state = flow(now=now, database_url=database_url, rules=rules, return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def test_stalled_leads_go_back_to_nurture_with_a_reason(database_url, tmp_path):
    engine = store.get_engine(database_url)
    rules = str(write(tmp_path / "recycle.yaml", POLICY))
    ignored, not_accepted, not_now, quiet, lost, busy, too_often = mqls(engine, ["US"] * 7)
    run_route(database_url, tmp_path)
    owners = table(database_url, "leads").set_index("id")["owner_rep_id"].astype(int)
    day = timedelta(days=1)
    with engine.begin() as conn:
        for lead in (not_now, quiet, lost, busy, too_often):
            move(conn, lead, "routed", "accepted", NOW + day)
            activity(conn, lead, owners[lead], "accept", NOW + day)
        activity(conn, not_now, owners[not_now], "not_now", NOW + 2 * day, "next quarter")
        move(conn, lost, "accepted", "qualified", NOW + 2 * day)
        move(conn, lost, "qualified", "lost", NOW + 3 * day, outcome="lost")
        activity(conn, lost, owners[lost], "lost", NOW + 3 * day, "Timing: budget next year")
        activity(conn, busy, owners[busy], "call", NOW + 10 * day)
        move(conn, too_often, "accepted", "accepted", NOW, recycle_count=3)
        activity(conn, too_often, owners[too_often], "no_response", NOW + 2 * day)
        move(conn, ignored, "routed", "accepted", NOW + day)  # accepted, then worked on
        activity(conn, ignored, owners[ignored], "call", NOW + 15 * day)
    # Day 4: only the dispositions and the lost lead; routed leads still have a day.
    early = recycle(database_url, rules, NOW + 4 * day)
    assert early["reasons"] == {"lost": 1, "not_now": 1, "no_response": 1}
    assert (early["recycled"], early["disqualified"]) == (2, 1)
    # Day 16: the routed lead was never accepted (5d); `quiet` had no activity for 15 days;
    # `busy` called on day 10 (6 days ago) and `ignored` yesterday: not stalled.
    later = recycle(database_url, rules, NOW + 16 * day)
    assert later["reasons"] == {"not_accepted": 1, "stalled_in_accepted": 1}
    leads = table(database_url, "leads").set_index("id")
    assert leads.loc[[not_accepted, not_now, quiet, lost], "status"].eq("nurturing").all()
    assert leads.loc[too_often, "status"] == "disqualified"
    assert leads.loc[[busy, ignored], "status"].eq("accepted").all()
    assert leads.loc[[not_accepted, not_now, quiet, lost], "owner_rep_id"].isna().all()
    assert leads.loc[not_now, "score"] == 40.0 and leads.loc[not_now, "recycle_count"] == 1
    events = table(database_url, "lead_events").query("actor == 'recycle'")
    steps = events[events["lead_id"] == lost][["from_status", "to_status", "reason"]]
    assert steps.values.tolist() == [
        ["lost", "recycled", "recycled: lost: Timing: budget next year"],
        ["recycled", "nurturing", "back to nurture: lost: Timing: budget next year"],
    ]
    assignments = table(database_url, "assignments").set_index("lead_id")
    assert assignments.loc[not_accepted, "released_reason"] == "recycled: not_accepted"
    assert pd.isna(assignments.loc[busy, "released_at"])
    again = recycle(database_url, rules, NOW + 16 * day)
    assert again["recycled"] == 0 and again["disqualified"] == 0  # nothing twice


def test_a_rejecting_rep_gets_the_lead_back_only_after_the_cool_down(database_url, tmp_path):
    engine = store.get_engine(database_url)
    rules = str(write(tmp_path / "recycle.yaml", POLICY))
    (lead,) = mqls(engine, ["US"])
    run_route(database_url, tmp_path)
    first = table(database_url, "assignments").iloc[0]
    day = timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(
            t.assignments.update()
            .where(t.assignments.c.id == int(first["id"]))
            .values(released_at=NOW + day, released_reason="rejected: wrong territory")
        )
        move(conn, lead, "routed", "mql", NOW + day, owner_rep_id=None)
    run_route(database_url, tmp_path)
    second = table(database_url, "assignments").iloc[1]
    assert second["rep_code"] != first["rep_code"]
    recycle(database_url, rules, NOW + 20 * day)  # the second rep never accepted it
    with engine.connect() as conn:
        avoid = table(database_url, "assignments").iloc[0]["avoid_until"]
        assert avoid == NOW + day + timedelta(days=90)
        during = routing_store.reps_to_avoid(conn, [lead], NOW + 60 * day)
        after = routing_store.reps_to_avoid(conn, [lead], NOW + 100 * day)
    assert first["rep_code"] in during[lead]
    assert first["rep_code"] not in after.get(lead, [])
