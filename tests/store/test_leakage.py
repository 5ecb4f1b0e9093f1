"""The leakage report on SQLite and PostgreSQL: unworked, stuck and dead-claimed leads
(recycling itself is in flows/test_recycle.py)."""

from __future__ import annotations

from datetime import timedelta

from leadflow import store
from leadflow import tables as t

from helpers import NOW, move, mqls, write
from helpers import RECYCLE_POLICY as POLICY


def test_leakage_lists_unworked_stuck_and_dead_claimed_leads(database_url, tmp_path):
    from leadflow.kpi.leakage import find_leaks
    from leadflow.recycle.rules import load_rules

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
