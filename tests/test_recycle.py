"""Recycling on SQLite and PostgreSQL: stalled leads (never accepted, not now, no activity,
lost for a recyclable reason) go back to nurture with a reason code, owners released, scores
decayed, counts kept; past the maximum they are disqualified; a rep who rejected a lead does
not get it back within the cool-down. Then the leakage report."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from test_route_flow import NOW, mqls, run_route

from leadflow import lifecycle, routing_store, store
from leadflow import tables as t

from conftest import write
from helpers import table

pytestmark = pytest.mark.flow

POLICY = """
name: test-recycle
routed_not_accepted: 5d
no_activity: {accepted: 14d, qualified: 30d}
dispositions: [not_now, no_response]
lost_reasons: [timing, budget]
owner: release
cooldown: 90d
score: {action: decay, factor: 0.5}
max_recycles: 3
after_max: disqualify
max_in_status: {mql: 4h, routed: 6d}
"""


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


def move(conn, lead: int, source: str, target: str, at, **fields) -> None:
    lifecycle.apply(
        conn,
        pd.DataFrame({"id": [lead], "from_status": source, "to_status": target, **fields}),
        actor="test",
        at=at,
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


def test_leakage_lists_unworked_stuck_and_dead_claimed_leads(database_url, tmp_path):
    from leadflow.recycle_rules import load_rules
    from tasks.leakage import find_leaks

    engine = store.get_engine(database_url)
    rules, _ = load_rules(write(tmp_path / "recycle.yaml", POLICY))
    waiting, orphan, claimed = mqls(engine, ["US"] * 3)
    with engine.begin() as conn:
        move(conn, orphan, "mql", "nurturing", NOW)
        conn.execute(
            t.leads.update().where(t.leads.c.id == claimed).values(claimed_by="enrich:dead")
        )
    (unsubscribed,) = mqls(engine, ["US"])
    with engine.begin() as conn:
        move(conn, unsubscribed, "mql", "nurturing", NOW)
        conn.execute(
            t.engagement_events.insert().values(
                lead_id=unsubscribed, event_type="unsubscribe", occurred_at=NOW, event_key="u"
            )
        )
    with engine.connect() as conn:
        leaks = find_leaks(conn, rules, NOW + timedelta(hours=5))
    assert leaks["not_leakage"] == {"suppressed": 1}
    assert leaks["counts"] == {"no_owner_no_cadence": 1, "stuck": 2, "dead_claim": 1}
    by_kind = {(r["kind"], r["lead_id"]): r for r in leaks["leads"]}
    assert by_kind[("no_owner_no_cadence", orphan)]["why"] == "no cadence's entry criteria hold"
    assert by_kind[("stuck", waiting)]["hours"] == 5.0
    assert "longer than the 4h allowed" in by_kind[("stuck", waiting)]["why"]
    assert "stopped renewing" in by_kind[("dead_claim", claimed)]["why"]
