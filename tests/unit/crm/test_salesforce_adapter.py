"""The Salesforce adapter against the loopback Salesforce API over HTTPS: logins, upserts
(sObject Collections and Bulk API 2.0), per-record errors, session expiry, Retry-After, the
daily API budget, SOQL paging (read, owners, changed_since), describe and probe."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from loopback.salesforce_api import INTEGRATION_USER, SalesforceApi

from leadflow.crm.base import AuthError, CrmError, RateLimited, Record
from leadflow.crm.salesforce import SalesforceAdapter

pytestmark = pytest.mark.unit


@pytest.fixture
def api() -> Iterator[SalesforceApi]:
    with SalesforceApi(client_id="cid", client_secret="secret", daily_max=15000) as server:
        yield server


def adapter(api: SalesforceApi, sleeps: list[float] | None = None, **options: Any):
    options.setdefault("client_id", "cid")
    options.setdefault("client_secret", "secret")
    return SalesforceAdapter(
        login_url=api.url,
        ca_file=api.ca_file,
        bulk_poll_seconds=0,
        sleep=(sleeps if sleeps is not None else []).append,
        **options,
    )


def lead(lead_id: int, **properties: Any) -> Record:
    values = {"LastName": f"Last{lead_id}", "Company": f"Co{lead_id}"} | properties
    return Record(lead_id=lead_id, key=str(lead_id), properties=values)


def upserts(api: SalesforceApi) -> list[int]:
    """Records per sObject Collections call, in order."""
    return [n for method, path, n in api.calls if method == "PATCH" and "/composite/" in path]


def test_client_credentials_login_then_probe_reports_the_daily_budget(api: SalesforceApi) -> None:
    crm = adapter(api)
    line = crm.probe()
    port = api.url.rsplit(":", 1)[1]
    assert line == f"Salesforce reached at 127.0.0.1:{port}: 14,999 of 15,000 daily API calls left"
    assert api.logins == 1
    assert crm.usage.limit == {"api_usage": 1, "api_max": 15000}


def test_password_login_and_a_wrong_password(api: SalesforceApi) -> None:
    good = adapter(api, username=api.username, password=api.password)
    assert "daily API calls left" in good.probe()
    bad = adapter(api, username=api.username, password="wrong")
    with pytest.raises(AuthError, match="authentication failure") as caught:
        bad.probe()
    assert caught.value.status == 400


def test_a_bad_client_secret_is_an_auth_error_with_salesforces_description(
    api: SalesforceApi,
) -> None:
    with pytest.raises(AuthError, match="invalid client credentials"):
        adapter(api, client_secret="nope").upsert([lead(1)])
    assert not api.leads


def test_the_same_key_twice_makes_one_lead_created_then_updated(api: SalesforceApi) -> None:
    crm = adapter(api)
    [first] = crm.upsert([lead(7, Title="CTO")])
    [second] = crm.upsert([lead(7, Title="CEO")])
    assert first.ok and first.created is True
    assert second.ok and second.created is False
    assert first.crm_id == second.crm_id == api.leads["7"]["Id"]
    assert len(api.leads) == 1 and api.leads["7"]["Title"] == "CEO"


def test_450_records_go_in_three_collection_calls_of_at_most_200(api: SalesforceApi) -> None:
    crm = adapter(api)
    outcomes = crm.upsert([lead(i) for i in range(450)])
    assert upserts(api) == [200, 200, 50]
    assert sorted(o.lead_id for o in outcomes) == list(range(450))
    assert all(o.ok and o.created for o in outcomes)
    assert len(api.leads) == 450 and crm.usage.records == 450


def test_above_the_threshold_one_bulk_job_answers_for_every_record(api: SalesforceApi) -> None:
    crm = adapter(api, bulk_threshold=2000)
    crm.upsert([lead(0, Title="old")])
    records = [lead(i, Leadflow_SLA_Breached__c=i % 2 == 0) for i in range(2500)]
    records[10] = lead(10, Status="Maybe")
    records[20] = Record(lead_id=20, key="20", properties={"Company": "No last name"})
    outcomes = crm.upsert(records)

    jobs = [c for c in api.calls if c[0] == "POST" and c[1].endswith("/jobs/ingest")]
    uploads = [n for method, path, n in api.calls if method == "PUT"]
    assert len(jobs) == 1 and uploads == [2500] and upserts(api) == [1]
    by_id = {o.lead_id: o for o in outcomes}
    assert len(outcomes) == 2500 and set(by_id) == set(range(2500))
    assert by_id[0].ok and by_id[0].created is False and by_id[0].crm_id == api.leads["0"]["Id"]
    assert by_id[1].ok and by_id[1].created is True and by_id[1].crm_id == api.leads["1"]["Id"]
    failed = {o.lead_id: o for o in outcomes if not o.ok}
    assert set(failed) == {10, 20}
    assert failed[10].permanent and failed[10].error.startswith(
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST: Status: bad value for restricted picklist"
    )
    assert failed[20].permanent and "REQUIRED_FIELD_MISSING" in failed[20].error
    assert "LastName" in failed[20].error
    assert "10" not in api.leads and "20" not in api.leads
    assert api.leads["2"]["Leadflow_SLA_Breached__c"] is True
    assert api.leads["3"]["Leadflow_SLA_Breached__c"] is False


def test_per_record_errors_fail_only_those_records_permanently(api: SalesforceApi) -> None:
    owner = api.add_user("rep@example.com")
    crm = adapter(api)
    outcomes = crm.upsert(
        [
            lead(1, OwnerId=owner),
            lead(2, OwnerId="005000000000999AAA"),
            lead(3, Status="ann@example.com"),
            lead(4, Shoe_Size__c=44),
            lead(5, Status="Working - Contacted"),
        ]
    )
    by_id = {o.lead_id: o for o in outcomes}
    assert [i for i in sorted(by_id) if by_id[i].ok] == [1, 5]
    assert api.leads["1"]["OwnerId"] == owner and set(api.leads) == {"1", "5"}
    assert by_id[2].error == (
        "INVALID_CROSS_REFERENCE_KEY: Owner ID: invalid cross reference id (OwnerId)"
    )
    assert by_id[3].error.startswith("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")
    assert "ann@" not in by_id[3].error and "a…@example.com" in by_id[3].error
    assert by_id[4].error == "INVALID_FIELD: No such column 'Shoe_Size__c' on sobject of type Lead"
    assert all(by_id[i].permanent for i in (2, 3, 4))


def test_an_expired_session_logs_in_again_once(api: SalesforceApi) -> None:
    crm = adapter(api)
    crm.upsert([lead(1)])
    api.expire_sessions()
    [outcome] = crm.upsert([lead(2)])
    assert outcome.ok and api.logins == 2 and set(api.leads) == {"1", "2"}

    api.fail_next(2, status=401, path_contains="/limits")
    with pytest.raises(AuthError, match="INVALID_SESSION_ID"):
        crm.probe()
    assert api.logins == 3  # one more login, then the second 401 is final


def test_a_403_for_access_is_an_auth_error(api: SalesforceApi) -> None:
    api.fail_next(1, status=403, code="API_DISABLED_FOR_ORG", path_contains="/describe")
    with pytest.raises(AuthError, match="API_DISABLED_FOR_ORG: The REST API is not enabled"):
        adapter(api).properties()


def test_503_with_retry_after_is_waited_out(api: SalesforceApi) -> None:
    sleeps: list[float] = []
    crm = adapter(api, sleeps, max_wait_seconds=5)
    api.fail_next(2, status=503, retry_after=1.5, path_contains="/composite/")
    [outcome] = crm.upsert([lead(1)])
    assert outcome.ok and sleeps == [1.5, 1.5] and crm.usage.waited_seconds == 3.0
    assert upserts(api) == [1, 1, 1]


def test_a_retry_after_beyond_the_wait_budget_is_rate_limited(api: SalesforceApi) -> None:
    sleeps: list[float] = []
    crm = adapter(api, sleeps, max_wait_seconds=5)
    api.fail_next(1, status=429, retry_after=120, path_contains="/composite/")
    with pytest.raises(RateLimited) as caught:
        crm.upsert([lead(1)])
    assert caught.value.retry_after == 120 and sleeps == [] and crm.usage.throttled == 1


def test_a_503_without_retry_after_is_temporary_and_a_bad_query_permanent(
    api: SalesforceApi,
) -> None:
    crm = adapter(api)
    api.fail_next(1, status=503, path_contains="/limits")
    with pytest.raises(CrmError) as caught:
        crm.probe()
    assert caught.value.status == 503 and not caught.value.permanent
    with pytest.raises(CrmError, match="INVALID_FIELD: No such column 'Nope'") as caught:
        crm.read(["1"], ["Nope"])
    assert caught.value.status == 400 and caught.value.permanent


def test_an_unreachable_salesforce_is_a_temporary_error() -> None:
    crm = SalesforceAdapter(login_url="https://127.0.0.1:1", client_id="c", client_secret="s")
    with pytest.raises(CrmError) as caught:
        crm.probe()
    assert not caught.value.permanent and not isinstance(caught.value, AuthError)


def test_the_daily_reserve_stops_the_adapter_before_salesforce_does(api: SalesforceApi) -> None:
    api.daily_max = 30
    crm = adapter(api, daily_reserve=0.1)
    with pytest.raises(RateLimited) as caught:
        for i in range(100):
            crm.upsert([lead(i)])
    assert api.usage == 27  # 10 % of 30 calls left for others
    assert crm.usage.limit == {"api_usage": 27, "api_max": 30}
    assert caught.value.retry_after and caught.value.retry_after > 0
    assert len(api.leads) == 27


def test_salesforces_own_daily_limit_is_rate_limited(api: SalesforceApi) -> None:
    api.usage = api.daily_max
    crm = adapter(api)
    with pytest.raises(RateLimited, match="REQUEST_LIMIT_EXCEEDED") as caught:
        crm.upsert([lead(1)])
    assert caught.value.status == 403 and crm.usage.throttled == 1
    assert crm.usage.limit == {"api_usage": 15001, "api_max": 15000}


def test_read_returns_the_keys_salesforce_has(api: SalesforceApi) -> None:
    crm = adapter(api)
    crm.upsert([lead(i, Title=f"T{i}") for i in range(600)])
    quoted = Record(lead_id=9999, key="o'brien\\x", properties={"LastName": "O", "Company": "C"})
    crm.upsert([quoted])
    keys = [str(i) for i in range(0, 600, 2)] + [f"missing-{i}" for i in range(500)]
    keys += ["o'brien\\x"] * 3
    before = len(api.calls)
    found = crm.read(keys, ["Title", "Company"])
    assert set(found) == {str(i) for i in range(0, 600, 2)} | {"o'brien\\x"}
    assert found["4"] == {
        "Leadflow_Id__c": "4",
        "Title": "T4",
        "Company": "Co4",
        "id": api.leads["4"]["Id"],
    }
    assert len(api.calls) - before > 1  # the IN lists were split


def test_owners_are_read_across_pages(api: SalesforceApi) -> None:
    api.page_size = 3
    ids = {f"rep{i}@example.com": api.add_user(f"Rep{i}@Example.com") for i in range(6)}
    api.add_user("gone@example.com", active=False)
    owners = adapter(api).owners()
    assert owners == ids | {INTEGRATION_USER: next(iter(api.users))}
    assert sum("/query/" in path and path.count("-") == 1 for _, path, _ in api.calls) == 2


def test_changed_since_pages_in_order_and_sees_a_human_edit(api: SalesforceApi) -> None:
    crm = adapter(api)
    for i in range(5):  # one call each: five distinct LastModifiedDates
        crm.upsert([lead(i)])
    api.page_size = 2
    seen = list(crm.changed_since(None, ["Company"]))
    assert [r["Leadflow_Id__c"] for r, _ in seen] == ["0", "1", "2", "3", "4"]
    assert [c for _, c in seen] == sorted(c for _, c in seen)
    assert seen[2][0] == {
        "Leadflow_Id__c": "2",
        "Company": "Co2",
        "id": api.leads["2"]["Id"],
        "modified_at": seen[2][1],
    }
    assert sum(path.count("-") == 1 for _, path, _ in api.calls) == 2  # two queryMore pages
    cursor = seen[-1][1]
    assert list(crm.changed_since(cursor, ["Company"])) == []

    api.human_edit("1", Company="Renamed")
    api.delete("3")
    later = list(crm.changed_since(cursor, ["Company"]))
    assert [(r["Leadflow_Id__c"], r["Company"]) for r, _ in later] == [("1", "Renamed")]
    assert later[0][1] > cursor


def test_properties_are_the_lead_fields(api: SalesforceApi) -> None:
    fields = adapter(api).properties()
    assert {"Leadflow_Id__c", "LastName", "Company", "Email", "OwnerId", "Status"} <= fields
    assert "Leadflow_SLA_Breached__c" in fields and "Shoe_Size__c" not in fields
