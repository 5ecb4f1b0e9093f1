"""The lane puts a posted lead in the CRM, owned, in the same run that routed it: the lead's
crm_sync messages are sent right after its owner's notice (loopback Salesforce org)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from loopback.salesforce_api import SalesforceApi
from sqlalchemy import select

from leadflow import tables as t
from leadflow.settings import rules_folder
from tasks import crm as crm_tasks
from tasks.lane import run_lane

from helpers import AUTH, HOT, app_for, salesforce_env


@pytest.fixture
def org(monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceApi]:
    with SalesforceApi() as api:
        salesforce_env(monkeypatch, api)
        crm_tasks._adapters.clear()
        yield api
        crm_tasks._adapters.clear()


def test_a_posted_lead_is_in_the_crm_owned_when_the_lane_is_done(
    database_url, engine, tmp_path, org
) -> None:
    routing = yaml.safe_load((rules_folder() / "routing.yaml").read_text())
    users = {rep["email"].lower(): org.add_user(rep["email"]) for rep in routing["reps"]}
    client = app_for(database_url)
    ids = [
        client.post("/leads", json={"email": f"buyer{n}@acme{n}.com", **HOT}, headers=AUTH).json()[
            "lead_id"
        ]
        for n in range(2)
    ]
    summary = run_lane(ids, database_url, notifier=f"maildir:{tmp_path / 'mail'}")
    assert "2 lead(s)" in summary["crm"]["salesforce"], summary["crm"]
    with engine.connect() as conn:
        owners = dict(
            conn.execute(
                select(t.leads.c.id, t.reps.c.email)
                .join(t.reps, t.reps.c.id == t.leads.c.owner_rep_id)
                .where(t.leads.c.id.in_(ids))
            ).all()
        )
        waiting = conn.execute(
            select(t.outbox.c.status).where(t.outbox.c.kind == "crm_sync")
        ).scalars()
        assert set(waiting) == {"sent"}
    for lead in ids:
        record = org.leads[str(lead)]
        assert record["OwnerId"] == users[owners[lead].lower()]
        assert record["Status"] == "Open - Not Contacted" and record["Leadflow_Score__c"] > 0
    # The lane's session is kept: one login for this run and the next.
    run_lane(ids, database_url, notifier=f"maildir:{tmp_path / 'mail'}")
    assert org.logins == 1


def test_a_crm_that_refuses_never_fails_the_lane(database_url, engine, tmp_path, org) -> None:
    org.client_secret = "rotated"  # the org no longer takes leadflow's secret
    client = app_for(database_url)
    lead = client.post("/leads", json={"email": "b@acme.com", **HOT}, headers=AUTH).json()[
        "lead_id"
    ]
    summary = run_lane([lead], database_url, notifier=f"maildir:{tmp_path / 'mail'}")
    assert summary["hops"]["route"]["moved"] == {"routed": 1}
    assert "stopped" in summary["crm"]["salesforce"] or "not synced" in summary["crm"]["salesforce"]
    with engine.connect() as conn:
        waiting = set(
            conn.execute(select(t.outbox.c.status).where(t.outbox.c.kind == "crm_sync")).scalars()
        )
    assert waiting == {"pending"} and not org.leads
