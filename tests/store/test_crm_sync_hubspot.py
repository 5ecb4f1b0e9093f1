"""The CRM sync into the loopback HubSpot portal: contacts upserted by leadflow_id with the
owner as a HubSpot owner id, a property the portal lacks named with its mapping field, and a
429 with Retry-After waited out inside the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from loopback.hubspot_api import HubSpotApi
from sqlalchemy import select

from leadflow import tables as t
from leadflow.crm import mapping as crm_mapping
from leadflow.crm import sync as crm_sync
from leadflow.crm.hubspot import HubSpotAdapter

from helpers import NOW, add_crm_reps, move, mqls, route_to

CUSTOM = (
    "leadflow_score",
    "leadflow_temperature",
    "leadflow_routing_reason",
    "leadflow_sla_breached",
    "leadflow_recycle_reason",
)


@pytest.fixture
def portal(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubSpotApi]:
    monkeypatch.setenv(crm_mapping.ENV, "hubspot")
    with HubSpotApi() as api:
        for name in CUSTOM:
            api.add_property(name)
        yield api


def adapter(api: HubSpotApi, sleeps: list[float] | None = None) -> HubSpotAdapter:
    return HubSpotAdapter(
        access_token=api.token,
        base_url=api.url,
        sleep=(sleeps if sleeps is not None else []).append,
    )


def routed(engine, n: int) -> list[int]:
    ids = mqls(engine, ["US"] * n)
    route_to(engine, ids, add_crm_reps(engine)["ann@reps.example"])
    return ids


def test_contacts_carry_owner_status_and_score(engine, portal) -> None:
    owner = portal.add_owner("Ann@Reps.example", "Ann", "A")
    ids = routed(engine, 3)
    mapping = crm_mapping.load_mapping("hubspot")[0]
    report = crm_sync.sync(engine, adapter(portal), mapping)
    assert (report.leads, report.written, report.created, report.dead) == (3, 3, 3, 0)
    contact = portal.contacts[str(ids[0])]
    assert contact["hubspot_owner_id"] == owner and contact["hs_lead_status"] == "NEW"
    assert float(contact["leadflow_score"]) == 80.0 and contact["leadflow_temperature"] == "warm"
    # A person marks the lead open (worked) in HubSpot, then leadflow rescores it before the
    # pull has read the change: the score goes, the person's status stays (the pull turns it
    # into an accept; writing NEW over it first would lose that).
    portal.human_edit(str(ids[0]), hs_lead_status="OPEN")
    with engine.begin() as conn:
        move(conn, ids[0], "routed", "routed", NOW, score=91.0)
    again = crm_sync.sync(engine, adapter(portal), mapping)
    assert again.written == 1 and again.kept == 1
    contact = portal.contacts[str(ids[0])]
    assert float(contact["leadflow_score"]) == 91.0
    assert contact["hs_lead_status"] == "OPEN"
    assert len(portal.contacts) == 3


def test_a_missing_property_names_the_mapping_field_and_a_429_is_waited_out(engine, portal) -> None:
    portal.add_owner("ann@reps.example")
    routed(engine, 2)
    mapping = crm_mapping.load_mapping("hubspot")[0]
    bad = mapping.model_copy(
        update={"fields": {**mapping.fields, "company": crm_mapping.FieldRule(to="company_nam")}}
    )
    portal.fail_next(1, status=429, path_contains="batch/upsert", retry_after=1)
    sleeps: list[float] = []
    report = crm_sync.sync(engine, adapter(portal, sleeps), bad)
    assert report.usage["throttled"] == 1 and 1 in sleeps
    # Every record carries the bad property: each is refused alone, with HubSpot's words.
    assert report.dead == 2 and not portal.contacts
    with engine.connect() as conn:
        errors = set(
            conn.execute(
                select(t.outbox.c.last_error).where(t.outbox.c.kind == "crm_sync")
            ).scalars()
        )
    assert any(
        'Property "company_nam" does not exist' in e and "fields.company" in e for e in errors
    )
