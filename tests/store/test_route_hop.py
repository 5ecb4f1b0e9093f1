"""The routing hop without Prefect, on SQLite and PostgreSQL: two routers at once never
double-assign or overfill, and a typo in the routing rules is one clear message."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from leadflow import runner as hops
from leadflow import store
from leadflow import tables as t
from leadflow.routing import hop as route_hop
from tasks import routing as routing_tasks

from helpers import NOW, RULES, mqls, rules_file, write


def test_two_routers_at_once_never_double_assign_or_overfill(database_url, tmp_path):
    if not store.is_postgres(store.get_engine(database_url)):
        pytest.skip("SQLite has one writer")
    engine = store.get_engine(database_url)
    mqls(engine, ["US"] * 300)
    rules, version, text = routing_tasks.load_rules(rules_file(tmp_path, capacity=100))
    context = route_hop.RouteContext(rules, version, text)
    hop = route_hop.HOP.__class__(**{**route_hop.HOP.__dict__, "batch_size": 40})
    errors: list[BaseException] = []

    def router() -> None:
        try:
            after = 0
            while (
                outcome := hops.run_batch(hop, context, engine, now=NOW, after=after)
            ) is not None:
                after = outcome.next_after
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=router) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with engine.connect() as conn:
        per_lead = conn.execute(
            select(t.assignments.c.lead_id, func.count()).group_by(t.assignments.c.lead_id)
        ).all()
        per_rep = dict(
            conn.execute(
                select(t.assignments.c.rep_code, func.count()).group_by(t.assignments.c.rep_code)
            ).all()
        )
    assert {n for _, n in per_lead} == {1}  # nobody assigned twice
    assert per_rep == {"ann": 100, "bob": 100}  # both full, neither past capacity
    assert len(per_lead) == 200


def test_a_typo_in_the_routing_rules_is_one_clear_message(database_url, tmp_path, capsys):
    from app import cli

    bad = write(
        tmp_path / "bad.yaml", RULES.replace("CAP", "-1").replace("Europe/Berlin", "Europe/Berlinn")
    )
    capsys.readouterr()
    assert cli.main(["route", "--rules", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert "reps[cem].timezone" in err and "reps[ann].capacity.max_open" in err
    assert str(bad) in err
