"""Routing's I/O on SQLite and PostgreSQL: reps synced, state and load read, state saved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
from sqlalchemy import select

from leadflow import store
from leadflow import tables as t
from leadflow.routing import store as routing_store
from leadflow.routing.decide import route_leads
from leadflow.routing.rules import load_rules

from helpers import ROOT

NOW = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)


def test_state_round_trip_with_load_from_the_database(engine) -> None:
    rules, version, _ = load_rules(ROOT / "rules" / "routing.yaml")
    with engine.begin() as conn:
        ids = routing_store.sync_reps(conn, rules, NOW)
        assert routing_store.sync_reps(conn, rules, NOW) == ids  # idempotent
        state = routing_store.read_state(conn, rules, ids, NOW)
    assert state["served"].sum() == 0 and not state["available"].any()
    leads = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "country": "DE",
            "region": "EMEA",
            "account_owner_rep_id": [None, ids["ava-ng"], None],
        }
    )
    leads["account_owner"] = routing_store.account_owner_codes(leads, ids)
    result = route_leads(leads, rules, state, NOW, version=version)
    assert result.assignments["owner"].tolist() == ["felix-weber", "ava-ng", "felix-weber"]
    with engine.begin() as conn:
        routing_store.write_state(conn, result.reps_state, NOW)
        rows = routing_store.assignment_rows(result.assignments, ids, NOW, "run-1")
        store.bulk_insert(conn, t.assignments, rows)
        # One of Felix's leads is in the store as routed (open); yesterday's assignment in
        # Berlin is not "new today".
        conn.execute(
            t.leads.insert().values(
                id=1,
                status="routed",
                owner_rep_id=ids["felix-weber"],
                captured_at=NOW,
                last_seen_at=NOW,
                updated_at=NOW,
                status_changed_at=NOW,
            )
        )
        old = rows.iloc[[0]].assign(assigned_at=pd.Timestamp(NOW - timedelta(days=1)))
        store.bulk_insert(conn, t.assignments, old)
    with engine.begin() as conn:
        again = routing_store.read_state(conn, rules, ids, NOW).set_index(["pool", "rep"])
        saved = conn.execute(select(t.assignments.c.candidates, t.assignments.c.reason)).first()
    felix = again.loc[("emea", "felix-weber")]
    assert (felix["served"], bool(felix["available"])) == (2.0, True)
    assert (felix["open_leads"], felix["new_today"]) == (1, 2)
    assert again.loc[("na-ent", "ava-ng"), "new_today"] == 1
    assert saved.candidates["felix-weber"] == "assigned" and "rule emea" in saved.reason
