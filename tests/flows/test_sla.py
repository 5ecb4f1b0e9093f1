"""SLA checks on SQLite and PostgreSQL: timers start at assignment in the owner's business time,
the earliest genuine activity meets them whenever it arrives, each escalation level fires once
however often the check runs, level 2 reassigns away from everyone who held the lead and, with
nobody left, to the manager."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import select

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.sla import check as sla

from helpers import NOW, check, files, mqls, owners, routed_hot_leads, table

pytestmark = pytest.mark.flow


def add_activities(database_url: str, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    with store.get_engine(database_url).begin() as conn:
        codes = dict(conn.execute(select(t.reps.c.code, t.reps.c.id)).all())
        frame["rep_id"] = frame.pop("rep").map(codes)
        frame["activity_key"] = [f"k{i}-{r}" for i, r in enumerate(frame["occurred_at"])]
        frame["recorded_at"] = pd.Timestamp(store.utcnow())
        if "automated" not in frame.columns:
            frame["automated"] = False
        frame["automated"] = frame["automated"].fillna(False).astype(bool)
        store.bulk_insert(conn, t.activities, frame)


def test_each_escalation_level_fires_once_and_level_two_reassigns_away(database_url, tmp_path):
    ids = routed_hot_leads(database_url, tmp_path, 3)
    first_owner = owners(database_url)
    assert set(first_owner.values()) == {"ann", "bob"}

    started = check(database_url, tmp_path, NOW)
    assert started["timers_started"] == 6  # hot first touch + acceptance, per lead
    assert (started["warnings"], started["level_1"]) == (0, 0)
    # 12 of 15 business minutes: one warning per hot timer, once.
    for _ in range(2):
        warned = check(database_url, tmp_path, NOW + timedelta(minutes=12, seconds=30))
    assert warned["warnings"] == 0
    timers = table(database_url, "sla_timers")
    assert timers.query("policy == 'hot-first-touch'")["warned_at"].notna().all()

    for _ in range(3):  # however often it runs: one level-1 breach per timer
        late = check(database_url, tmp_path, NOW + timedelta(minutes=16))
    breaches = table(database_url, "sla_breaches")
    assert len(breaches) == 3 and set(breaches["level"]) == {1}
    assert set(breaches["action"]) == {"notified"}
    outbox = table(database_url, "outbox")
    keys = set(outbox["idempotency_key"])
    assert all(
        f"sla:{i}:1:owner" in keys and f"sla:{i}:1:manager" in keys for i in breaches["timer_id"]
    )
    assert late["open_breaches"] == 3

    for _ in range(2):
        check(database_url, tmp_path, NOW + timedelta(minutes=61))
    breaches = table(database_url, "sla_breaches")
    second = breaches[breaches["level"] == 2]
    assert len(second) == 3 and set(second["action"]) == {"reassigned"}
    now_owner = owners(database_url)
    assert all(now_owner[i] != first_owner[i] for i in ids)  # away from who held it
    assignments = table(database_url, "assignments")
    released = assignments[assignments["released_at"].notna()]
    assert len(released) == 3 and set(released["released_reason"]) == {
        "sla: hot-first-touch level 2"
    }
    ledger = table(database_url, "lead_events").query("kind == 'reassignment'")
    assert len(ledger) == 3 and ledger["reason"].str.contains("breached by").all()
    # The new owners' clocks started at the reassignment; the old ones are closed.
    timers = table(database_url, "sla_timers")
    assert (timers["closed_reason"] == "reassigned").sum() == 6
    fresh = timers[timers["closed_at"].isna() & (timers["policy"] == "hot-first-touch")]
    assert len(fresh) == 3
    assert (
        pd.to_datetime(fresh["started_at"], utc=True) == pd.Timestamp(NOW + timedelta(minutes=61))
    ).all()

    # The second owners do nothing either: nobody in the pool has not held the lead -> olga.
    check(database_url, tmp_path, NOW + timedelta(minutes=200))
    final = owners(database_url)
    assert set(final.values()) == {"olga"}
    to_manager = table(database_url, "sla_breaches").query("action == 'to_manager'")
    assert len(to_manager) == 3
    assert to_manager["reason"].str.contains("nobody left who has not held it").all()
    ledger = table(database_url, "lead_events").query("kind == 'reassignment'")
    assert len(ledger) == 6  # two reassignments per lead, each in the ledger
    gates = table(database_url, "dq_results").query("hop == 'sla'")
    assert len(gates) >= 7 and gates["success"].all()


def test_earliest_genuine_activity_meets_the_timer_whenever_it_arrives(database_url, tmp_path):
    (lead,) = routed_hot_leads(database_url, tmp_path, 1)
    owner = owners(database_url)[lead]
    check(database_url, tmp_path, NOW)
    # An automated touch never counts; a call after the due time is a late first touch.
    add_activities(
        database_url,
        [
            {
                "lead_id": lead,
                "rep": owner,
                "activity_type": "email",
                "automated": True,
                "occurred_at": NOW + timedelta(minutes=2),
            },
            {
                "lead_id": lead,
                "rep": owner,
                "activity_type": "call",
                "occurred_at": NOW + timedelta(minutes=20),
            },
        ],
    )
    check(database_url, tmp_path, NOW + timedelta(minutes=25))
    timer = table(database_url, "sla_timers").query("policy == 'hot-first-touch'").iloc[0]
    assert timer["business_minutes"] == 20 and timer["closed_reason"] == "met"
    breach = table(database_url, "sla_breaches").iloc[0]
    assert (breach["action"], breach["level"]) == ("met_late", 1)
    # A call logged later that happened earlier wins: the true first touch is 9 minutes.
    add_activities(
        database_url,
        [
            {
                "lead_id": lead,
                "rep": owner,
                "activity_type": "call",
                "occurred_at": NOW + timedelta(minutes=9),
            }
        ],
    )
    check(database_url, tmp_path, NOW + timedelta(minutes=30))
    timer = table(database_url, "sla_timers").query("policy == 'hot-first-touch'").iloc[0]
    assert timer["business_minutes"] == 9
    assert len(table(database_url, "sla_breaches")) == 1  # recorded once, never re-fired
    # Met timers never escalate.
    check(database_url, tmp_path, NOW + timedelta(hours=3))
    assert owners(database_url)[lead] == owner
    with store.get_engine(database_url).connect() as conn:
        rows = sla.compliance(conn).set_index("policy")
    assert rows.loc["hot-first-touch", "on_time"] == 1


def test_deadlines_follow_the_owners_working_hours_and_holidays(database_url, tmp_path):
    # Ann works 09:00-17:00 New York. Assigned Friday 2026-11-27 16:55 local (the day after
    # Thanksgiving is a workday): 5 minutes that day, 10 on Monday -> due Monday 09:10.
    friday = datetime(2026, 11, 27, 21, 55, tzinfo=UTC)
    mqls(store.get_engine(database_url), ["US"], temperature="hot")
    routing, _ = files(tmp_path)
    from flows.route import route

    state = route(
        now=friday, database_url=database_url, rules=routing, notifier=None, return_state=True
    )
    assert state.is_completed()
    check(database_url, tmp_path, friday)
    timers = table(database_url, "sla_timers").set_index("policy")
    owner = owners(database_url)
    expected = {
        "ann": datetime(2026, 11, 30, 14, 10, tzinfo=UTC),  # 09:10 New York
        "bob": datetime(2026, 11, 30, 15, 10, tzinfo=UTC),  # 09:10 Chicago (16:55 was after hours)
    }
    (code,) = owner.values()
    if code == "bob":  # Bob's Friday ended at 17:00 Chicago = 23:00 UTC: 65 minutes left
        expected["bob"] = datetime(2026, 11, 27, 22, 10, tzinfo=UTC)
    assert pd.Timestamp(timers.loc["hot-first-touch", "due_at"]) == pd.Timestamp(expected[code])


def test_a_lead_that_leaves_sales_closes_its_timers(database_url, tmp_path):
    (lead,) = routed_hot_leads(database_url, tmp_path, 1)
    check(database_url, tmp_path, NOW)
    with store.get_engine(database_url).begin() as conn:
        lifecycle.apply(
            conn,
            pd.DataFrame({"id": [lead], "from_status": "routed", "to_status": "disqualified"}),
            actor="test",
            at=NOW,
        )
    check(database_url, tmp_path, NOW + timedelta(hours=5))
    timers = table(database_url, "sla_timers")
    assert set(timers["closed_reason"]) == {"lead left: disqualified"}
    assert table(database_url, "sla_breaches").empty
