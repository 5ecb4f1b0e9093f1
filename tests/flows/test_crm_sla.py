"""An SLA breach reaches the CRM as a flag, and the flag goes when the breached clock closes:
met late by the owner's call (no other change of the lead tells the CRM), or closed by the
level-2 escalation's reassignment."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pandas as pd
import pytest
from loopback.salesforce_api import SalesforceApi
from sqlalchemy import select

from leadflow import store
from leadflow import tables as t
from leadflow.crm import mapping as crm_mapping
from leadflow.crm import sync as crm_sync
from leadflow.crm.salesforce import SalesforceAdapter

from helpers import NOW, check, owners, routed_hot_leads


@pytest.fixture
def org(monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceApi]:
    monkeypatch.setenv(crm_mapping.ENV, "salesforce")
    with SalesforceApi() as api:
        for email in ("ann", "bob", "cem", "olga"):
            api.add_user(f"{email}@reps.example")
        yield api


def sync(database_url: str, org: SalesforceApi) -> crm_sync.SyncReport:
    adapter = SalesforceAdapter(
        login_url=org.url, client_id="cid", client_secret="secret", ca_file=org.ca_file
    )
    mapping = crm_mapping.load_mapping("salesforce")[0]
    return crm_sync.sync(store.get_engine(database_url), adapter, mapping)


def test_the_breach_flag_is_set_then_cleared(database_url, tmp_path, org) -> None:
    [lead] = routed_hot_leads(database_url, tmp_path, 1)
    sync(database_url, org)
    assert org.leads[str(lead)]["Leadflow_SLA_Breached__c"] is False
    check(database_url, tmp_path, NOW + timedelta(minutes=20))  # hot first touch: 15 min
    assert sync(database_url, org).written == 1
    assert org.leads[str(lead)]["Leadflow_SLA_Breached__c"] is True
    first_owner = org.leads[str(lead)]["OwnerId"]
    check(database_url, tmp_path, NOW + timedelta(hours=2))  # level 2: reassigned
    assert sync(database_url, org).written == 1
    record = org.leads[str(lead)]
    assert record["Leadflow_SLA_Breached__c"] is False and record["OwnerId"] != first_owner


def test_the_flag_goes_when_a_late_call_meets_the_clock(database_url, tmp_path, org) -> None:
    [lead] = routed_hot_leads(database_url, tmp_path, 1)
    check(database_url, tmp_path, NOW + timedelta(minutes=20))
    sync(database_url, org)
    assert org.leads[str(lead)]["Leadflow_SLA_Breached__c"] is True
    code = owners(database_url)[lead]
    with store.get_engine(database_url).begin() as conn:  # the owner calls, late
        rep = conn.execute(select(t.reps.c.id).where(t.reps.c.code == code)).scalar_one()
        store.bulk_insert(
            conn,
            t.activities,
            pd.DataFrame(
                {
                    "lead_id": [lead],
                    "rep_id": [rep],
                    "activity_type": ["call"],
                    "occurred_at": [NOW + timedelta(minutes=22)],
                    "activity_key": ["late-call"],
                    "recorded_at": [pd.Timestamp(store.utcnow())],
                    "automated": [False],
                }
            ),
        )
    check(database_url, tmp_path, NOW + timedelta(minutes=25))
    assert sync(database_url, org).written == 1
    assert org.leads[str(lead)]["Leadflow_SLA_Breached__c"] is False
