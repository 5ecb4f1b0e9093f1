"""The CRM sync end to end on the database: decisions queue crm_sync messages in their own
transaction, the sync coalesces them per lead and upserts the latest values into the loopback
Salesforce org (real HTTPS, the documented shapes), and every failure stays in the outbox with
its reason while the other leads go on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from loopback.salesforce_api import SalesforceApi
from sqlalchemy import func, select, update

from leadflow import lifecycle
from leadflow import tables as t
from leadflow.crm import mapping as crm_mapping
from leadflow.crm import sync as crm_sync
from leadflow.crm.salesforce import SalesforceAdapter

from helpers import NOW, add_crm_reps, move, mqls, route_to


@pytest.fixture
def org(monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceApi]:
    monkeypatch.setenv(crm_mapping.ENV, "salesforce")
    with SalesforceApi() as api:
        yield api


def adapter(api: SalesforceApi) -> SalesforceAdapter:
    return SalesforceAdapter(
        login_url=api.url, client_id="cid", client_secret="secret", ca_file=api.ca_file
    )


def mapping() -> crm_mapping.CrmMapping:
    return crm_mapping.load_mapping("salesforce")[0]


def outbox_rows(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(select(t.outbox).where(t.outbox.c.kind == "crm_sync")).all()
    return pd.DataFrame([dict(r._mapping) for r in rows])


def test_decisions_reach_salesforce_once_each_with_their_latest_values(engine, org) -> None:
    reps = add_crm_reps(engine)
    ann = org.add_user("ANN@reps.example")  # Salesforce matches users by email, any case
    ids = mqls(engine, ["US"] * 3)
    route_to(engine, ids, reps["ann@reps.example"])
    queued = outbox_rows(engine)
    # enriched, mql (with score) and routed: three decisions, three messages per lead
    assert len(queued) == 9 and set(queued["recipient"]) == {"salesforce"}
    # Claims of 2 messages: each takes its leads' other messages too, so each lead is
    # written once with all its changes.
    report = crm_sync.sync(engine, adapter(org), mapping(), claim_size=2)
    assert (report.claimed, report.leads, report.written, report.created) == (9, 3, 3, 3)
    assert len(org.leads) == 3
    lead = org.leads[str(ids[0])]
    assert lead["OwnerId"] == ann and lead["Status"] == "Open - Not Contacted"
    assert lead["Leadflow_Score__c"] == 80.0 and lead["Company"] == f"Buyer {ids[0]}"
    assert lead["Leadflow_Routing_Reason__c"].startswith("rule north-america")
    assert lead["LastName"] == "[not provided]"  # required on create, leadflow had none
    assert set(outbox_rows(engine)["status"]) == {"sent"}
    # A rerun has nothing to send; a new decision is one more upsert, not a second record.
    assert crm_sync.sync(engine, adapter(org), mapping()).claimed == 0
    with engine.begin() as conn:
        move(conn, ids[0], "routed", "accepted", NOW)
    again = crm_sync.sync(engine, adapter(org), mapping())
    assert (again.written, again.created) == (1, 0) and len(org.leads) == 3
    assert org.leads[str(ids[0])]["Status"] == "Working - Contacted"


def test_a_person_in_salesforce_wins_where_the_policy_says(engine, org) -> None:
    reps = add_crm_reps(engine)
    org.add_user("ann@reps.example")
    bob = org.add_user("bob@reps.example")
    [lead] = mqls(engine, ["US"])
    route_to(engine, [lead], reps["ann@reps.example"])
    crm_sync.sync(engine, adapter(org), mapping())
    # In Salesforce a person renames the company and gives the lead to Bob.
    org.human_edit(str(lead), Company="Buyer Holdings", OwnerId=bob)
    with engine.begin() as conn:
        move(conn, lead, "routed", "accepted", NOW)
    plan = crm_sync.dry_run(engine, adapter(org), mapping())
    assert plan["fields"]["status"]["changes"] == 1
    assert set(plan["kept"]) == {"company", "owner"}
    assert org.leads[str(lead)]["Status"] == "Open - Not Contacted"  # the dry run wrote nothing
    report = crm_sync.sync(engine, adapter(org), mapping())
    assert report.written == 1 and report.kept == 2
    record = org.leads[str(lead)]
    assert (record["Company"], record["OwnerId"]) == ("Buyer Holdings", bob)
    assert record["Status"] == "Working - Contacted"
    drift = crm_sync.diff(engine, adapter(org), mapping())
    assert drift["fields"]["owner"]["drifted"] == 1 and drift["fields"]["company"]["drifted"] == 1


def test_refusals_stay_in_the_outbox_with_the_reason_and_the_others_go(engine, org) -> None:
    reps = add_crm_reps(engine)
    org.add_user("ann@reps.example")  # bob is not a Salesforce user
    ids = mqls(engine, ["US"] * 4)
    route_to(engine, ids[:2], reps["ann@reps.example"])
    route_to(engine, ids[2:3], reps["bob@reps.example"])
    with engine.begin() as conn:  # a value Salesforce's restricted picklist refuses
        conn.execute(update(t.leads).where(t.leads.c.id == ids[3]).values(status="won"))
        move(conn, ids[3], "won", "won", NOW, score=12.0)
    bad = mapping().model_copy(deep=True)
    bad.fields["status"].values["won"] = "Closed - Won Big"  # type: ignore[index]
    report = crm_sync.sync(engine, adapter(org), bad)
    assert (report.leads, report.written, report.dead) == (4, 2, 2)
    assert set(org.leads) == {str(ids[0]), str(ids[1])}
    rows = outbox_rows(engine)
    dead = rows[rows["status"] == "dead"]
    errors = set(dead["last_error"])
    assert any("b…@reps.example" in e and "not a Salesforce user" in e for e in errors)
    assert any(
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in e and "fields.status" in e for e in errors
    )
    assert not any("bob@reps.example" in e for e in errors)


def test_expired_credentials_and_limits_put_messages_back_untried(engine, org) -> None:
    reps = add_crm_reps(engine)
    org.add_user("ann@reps.example")
    ids = mqls(engine, ["US"] * 2)
    route_to(engine, ids, reps["ann@reps.example"])
    wrong = SalesforceAdapter(
        login_url=org.url, client_id="cid", client_secret="rotated", ca_file=org.ca_file
    )
    report = crm_sync.sync(engine, wrong, mapping())
    assert report.written == 0 and report.deferred == 6 and "invalid" in report.error.lower()
    rows = outbox_rows(engine)
    assert set(rows["status"]) == {"pending"} and rows["attempts"].max() == 0
    assert not org.leads
    # Fixed: the next run, once the messages are due again, sends everything.
    later = datetime.now(UTC) + timedelta(minutes=10)
    assert crm_sync.sync(engine, adapter(org), mapping(), now=later).written == 2
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.crm_records)).scalar() == 2


def test_no_crm_enabled_queues_nothing(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(crm_mapping.ENV, "none")
    mqls(engine, ["US"] * 2)
    assert outbox_rows(engine).empty


@pytest.mark.parametrize("policy", ["recreate", "dead_letter"])
def test_a_record_deleted_in_salesforce_is_recreated_or_dead_per_policy(
    engine, org, policy
) -> None:
    reps = add_crm_reps(engine)
    org.add_user("ann@reps.example")
    [lead] = mqls(engine, ["US"])
    route_to(engine, [lead], reps["ann@reps.example"])
    crm_sync.sync(engine, adapter(org), mapping())
    org.delete(str(lead))
    with engine.begin() as conn:
        move(conn, lead, "routed", "accepted", NOW)
    chosen = mapping().model_copy(update={"on_deleted": policy})
    report = crm_sync.sync(engine, adapter(org), chosen)
    if policy == "recreate":
        assert (report.written, report.created) == (1, 1)
        assert org.leads[str(lead)]["Status"] == "Working - Contacted"
        assert org.leads[str(lead)]["LastName"] == "[not provided]"  # a create again
    else:
        assert report.dead == 1 and str(lead) not in org.leads
        dead = outbox_rows(engine).query("status == 'dead'")
        assert "deleted (on_deleted: dead_letter" in dead["last_error"].iloc[0]


def test_two_syncs_at_once_write_each_lead_once(engine, org) -> None:
    """Two senders of one CRM (the lane and crm-sync, say) take turns: the second waits for
    the first's lock, then finds nothing left; no lead is written twice."""
    import threading

    reps = add_crm_reps(engine)
    org.add_user("ann@reps.example")
    ids = mqls(engine, ["US"] * 6)
    route_to(engine, ids, reps["ann@reps.example"])
    org.delay_seconds = 0.2
    reports: list[crm_sync.SyncReport] = []

    def run() -> None:
        reports.append(crm_sync.sync(engine, adapter(org), mapping(), claim_size=3))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(r.written for r in reports) == 6 and sum(r.created for r in reports) == 6
    upserts = [n for method, path, n in org.calls if method == "PATCH" and "/composite/" in path]
    assert sum(upserts) == 6 and len(org.leads) == 6
    assert set(outbox_rows(engine)["status"]) == {"sent"}


def test_a_write_whose_answer_was_lost_is_not_taken_for_a_persons_edit(engine, org) -> None:
    """The CRM took an upsert but the sync died before recording it (SIGKILL, a later batch
    failing): the rerun finds the CRM already holding leadflow's values, records them as
    written, and later decisions still reach the CRM."""
    reps = add_crm_reps(engine)
    org.add_user("ann@reps.example")
    [lead] = mqls(engine, ["US"])
    route_to(engine, [lead], reps["ann@reps.example"])
    crm_sync.sync(engine, adapter(org), mapping())
    with engine.begin() as conn:
        move(conn, lead, "routed", "accepted", NOW)
    # The accepted status reaches Salesforce, and its answer is lost.
    adapter(org).upsert(
        [crm_mapping.record(lead, mapping(), {"Status": "Working - Contacted"}, None)]
    )
    rerun = crm_sync.sync(engine, adapter(org), mapping())
    assert (rerun.unchanged, rerun.written, rerun.kept) == (1, 0, 0)
    for source, target in (("accepted", "qualified"), ("qualified", "lost")):
        with engine.begin() as conn:
            move(conn, lead, source, target, NOW)
    later = crm_sync.sync(engine, adapter(org), mapping())
    assert (later.written, later.kept) == (1, 0)
    assert org.leads[str(lead)]["Status"] == "Closed - Not Converted"


def test_an_owner_released_by_leadflow_is_cleared_in_salesforce(engine, org) -> None:
    reps = add_crm_reps(engine)
    org.add_user("ann@reps.example")
    [lead] = mqls(engine, ["US"])
    route_to(engine, [lead], reps["ann@reps.example"])
    crm_sync.sync(engine, adapter(org), mapping())
    assert org.leads[str(lead)]["Leadflow_Routing_Reason__c"]
    with engine.begin() as conn:  # recycled: the assignment ends with its reason
        conn.execute(
            update(t.assignments).where(t.assignments.c.lead_id == lead).values(released_at=NOW)
        )
        lifecycle.apply(
            conn,
            pd.DataFrame(
                {
                    "id": [lead],
                    "from_status": "routed",
                    "to_status": "recycled",
                    "owner_rep_id": [None],
                }
            ),
            actor="recycle",
            at=NOW,
        )
    crm_sync.sync(engine, adapter(org), mapping())
    assert org.leads[str(lead)].get("Leadflow_Routing_Reason__c") in (None, "")
