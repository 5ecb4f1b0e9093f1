"""The routing flow end to end on SQLite and PostgreSQL: MQLs get owners with reasons and
the owners are told once; a full pool waits; a rerun reassigns nothing; a dry run writes
nothing; a rejected lead never goes back to who rejected it. Two routers at once are in
store/test_route_hop.py."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sqlalchemy import select

from leadflow import lifecycle, store
from leadflow import tables as t

from helpers import NOW, RULES, mqls, rules_file, run_route, table, write


def mail(tmp_path: Path) -> list[str]:
    folder = tmp_path / "mail" / "new"
    return sorted(p.read_text() for p in folder.iterdir()) if folder.exists() else []


def test_mqls_are_routed_explained_and_their_owners_told_once(database_url, tmp_path):
    engine = store.get_engine(database_url)
    mqls(engine, ["US"] * 6 + ["DE", "BR"])
    summary = run_route(database_url, tmp_path)
    # Eight owner notices and eight booking links to the leads (rules/booking.yaml).
    assert (summary["routed"], summary["waiting"], summary["queued"]) == (8, 0, 16)
    assert summary["per_rep"] == {"ann": 4, "bob": 2, "cem": 1, "olga": 1}
    assert summary["notifications"]["sent"] == 16 and len(mail(tmp_path)) == 16
    leads = table(database_url, "leads")
    assert set(leads["status"]) == {"routed"} and leads["owner_rep_id"].notna().all()
    rows = table(database_url, "assignments").set_index("rep_code")
    assert rows.loc["cem", "reason"].startswith("rule europe")
    assert "fallback" in rows.loc["olga", "reason"]  # Brazil: no rule, the fallback queue
    ledger = table(database_url, "lead_events")
    assert (ledger["to_status"] == "routed").sum() == 8
    # Rerunning routes nobody again and sends nothing again.
    again = run_route(database_url, tmp_path)
    assert (again["routed"], again["queued"]) == (0, 0) and len(mail(tmp_path)) == 16
    assert len(table(database_url, "assignments")) == 8


def test_a_full_pool_waits_oldest_first_and_routes_as_capacity_frees(database_url, tmp_path):
    engine = store.get_engine(database_url)
    first = mqls(engine, ["US"] * 3)
    later = mqls(engine, ["US"] * 2)
    rules = str(rules_file(tmp_path, capacity=1))
    summary = run_route(database_url, tmp_path, rules=rules)
    assert (summary["routed"], summary["waiting"]) == (2, 3)
    assert summary["waiting_per_pool"] == {"na": 3}
    routed = table(database_url, "leads").query("status == 'routed'")["id"].tolist()
    assert routed == first[:2]  # the oldest two
    # Ann's lead is accepted and won: she has room again; the oldest waiting lead is hers.
    with engine.begin() as conn:
        ann = conn.execute(select(t.reps.c.id).where(t.reps.c.code == "ann")).scalar_one()
        mine = conn.execute(select(t.leads.c.id).where(t.leads.c.owner_rep_id == ann)).scalar_one()
        for source, target in (
            ("routed", "accepted"),
            ("accepted", "qualified"),
            ("qualified", "won"),
        ):
            changes = pd.DataFrame({"id": [mine], "from_status": source, "to_status": target})
            lifecycle.apply(conn, changes, actor="test", at=NOW)
    summary = run_route(database_url, tmp_path, rules=rules)
    assert (summary["routed"], summary["waiting"], summary["per_rep"]) == (1, 2, {"ann": 1})
    assert table(database_url, "leads").set_index("id").loc[first[2], "status"] == "routed"
    assert set(table(database_url, "leads").set_index("id").loc[later, "status"]) == {"mql"}


def test_a_dry_run_shows_what_changed_rules_would_do_and_writes_nothing(database_url, tmp_path):
    engine = store.get_engine(database_url)
    mqls(engine, ["US"] * 6)
    run_route(database_url, tmp_path)
    before = table(database_url, "assignments")
    changed = write(
        tmp_path / "changed.yaml",
        RULES.replace("CAP", "null")
        .replace("weight: 2", "weight: 1")
        .replace(
            "pools: [na], weight: 1, timezone: America/Chicago",
            "pools: [na], weight: 5, timezone: America/Chicago",
        ),
    )
    from flows.route import route_dry_run

    report = route_dry_run(rules=str(changed), now=NOW, database_url=database_url)
    per_rep = {row["rep"]: (row["before"], row["after"]) for row in report["per_rep"]}
    assert per_rep["ann"][0] == 4 and per_rep["ann"][1] < 4 and per_rep["bob"][1] > 2
    assert report["would_change_owner"] > 0 and "Routing dry run" in report["markdown"]
    assert table(database_url, "assignments").equals(before)
    assert set(table(database_url, "leads")["status"]) == {"routed"}


def test_explain_shows_the_routing_decision(database_url, tmp_path, capsys):
    import json

    from app import cli

    engine = store.get_engine(database_url)
    (lead,) = mqls(engine, ["DE"])
    run_route(database_url, tmp_path)
    capsys.readouterr()
    assert cli.main(["explain", str(lead), "--json"]) == 0
    routing = json.loads(capsys.readouterr().out)["routing"]
    assert [(r["rep_code"], r["step"], r["rule"], r["pool"]) for r in routing] == [
        ("cem", "rule", "europe", "emea")
    ]
    assert routing[0]["candidates"] == {"cem": "assigned"}


def test_a_lead_rejected_by_its_owner_is_never_routed_back_to_them(database_url, tmp_path):
    engine = store.get_engine(database_url)
    (lead,) = mqls(engine, ["US"])
    run_route(database_url, tmp_path)
    first = table(database_url, "assignments").iloc[0]
    # The owner rejects it: the assignment is released and the lead goes back to routing.
    with engine.begin() as conn:
        conn.execute(
            t.assignments.update()
            .where(t.assignments.c.id == int(first["id"]))
            .values(released_at=NOW, released_reason="rejected: not my territory")
        )
        lifecycle.apply(
            conn,
            pd.DataFrame(
                {"id": [lead], "from_status": "routed", "to_status": "mql", "owner_rep_id": [None]}
            ),
            actor="test",
            at=NOW,
        )
    for _ in range(2):
        run_route(database_url, tmp_path)
    rows = table(database_url, "assignments")
    assert len(rows) == 2
    second = rows.iloc[1]
    assert second["rep_code"] != first["rep_code"]
    candidates = second["candidates"]
    candidates = json.loads(candidates) if isinstance(candidates, str) else candidates
    assert candidates[first["rep_code"]] == "held it before"
