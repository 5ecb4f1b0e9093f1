"""`leadflow doctor`'s CRM lines against the loopback Salesforce org: reached, properties,
reps as users, dead sync messages; each failure names what to fix, no raw email."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback.salesforce_api import SalesforceApi
from sqlalchemy import insert

from app import doctor
from leadflow import store
from leadflow import tables as t

from helpers import NOW, salesforce_env


@pytest.fixture
def org(monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceApi]:
    with SalesforceApi() as api:
        salesforce_env(monkeypatch, api)
        yield api


def lines(findings) -> list[str]:
    return [f.line() for f in findings]


def test_no_crm_enabled_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_CRM", "none")
    [finding] = doctor.crm(None)
    assert finding.ok and not finding.skipped and "no CRM enabled" in finding.detail


def test_a_healthy_org_then_each_problem_named(sqlite_url: str, org, monkeypatch, tmp_path) -> None:
    engine = store.get_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(
            insert(t.reps).values(
                [
                    {"email": "ann@reps.example", "name": "Ann", "code": "ann", "created_at": NOW},
                    {"email": "bob@reps.example", "name": "Bob", "code": "bob", "created_at": NOW},
                ]
            )
        )
    org.add_user("ann@reps.example")
    org.add_user("bob@reps.example")
    healthy = doctor.crm(sqlite_url)
    assert all(f.ok and not f.skipped for f in healthy), lines(healthy)
    assert any("daily API calls left" in line for line in lines(healthy))
    # A rep who is not a user, a property the org lacks, dead messages.
    with engine.begin() as conn:
        conn.execute(
            insert(t.reps).values(email="cem@reps.example", name="Cem", code="cem", created_at=NOW)
        )
        conn.execute(
            insert(t.outbox).values(
                idempotency_key="crm:salesforce:1:x",
                kind="crm_sync",
                channel="crm",
                recipient="salesforce",
                lead_id=1,
                status="dead",
                attempts=1,
                next_attempt_at=NOW,
                created_at=NOW,
                last_error="refused",
            )
        )
    rules = tmp_path / "rules"
    (rules / "crm").mkdir(parents=True)
    shipped = (Path(__file__).parents[2] / "rules" / "crm" / "salesforce.yaml").read_text()
    (rules / "crm" / "salesforce.yaml").write_text(
        shipped.replace("Leadflow_Score__c", "Leadflow_Scroe__c")
    )
    monkeypatch.setenv("LEADFLOW_RULES_DIR", str(rules))
    sick = lines(doctor.crm(sqlite_url))
    text = "\n".join(sick)
    assert "FAIL crm salesforce: 1 rep(s) are not Salesforce users: c…@reps.example" in text
    assert "fields.score -> Leadflow_Scroe__c" in text and "salesforce.yaml" in text
    assert "1 sync message(s) dead" in text and "requeue-dead --kind crm_sync" in text
    assert "cem@reps.example" not in text
    # Credentials refused: one line, and the fix.
    org.client_secret = "rotated"
    refused = lines(doctor.crm(sqlite_url))
    assert (
        refused[0].startswith("FAIL crm salesforce: Salesforce login refused")
        and "fix:" in refused[0]
    )
