"""The HubSpot adapter through hubspot-api-client against the loopback HubSpot API (a real
HTTP server on 127.0.0.1): batching, the rate limit, HubSpot's errors, partial failures,
reads, owners, properties and the modified-since search across pages and the result cap."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from loopback.hubspot_api import HubSpotApi

from leadflow.crm.base import AuthError, CrmError, RateLimited, Record
from leadflow.crm.hubspot import HubSpotAdapter

UPSERT = "/crm/v3/objects/contacts/batch/upsert"


class FakeTime:
    """A clock the adapter sleeps on (and the server counts its window by)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def api() -> Iterator[HubSpotApi]:
    with HubSpotApi(token="pat-test") as server:
        yield server


def _adapter(api: HubSpotApi, **kwargs) -> HubSpotAdapter:
    return HubSpotAdapter(access_token="pat-test", base_url=api.url, **kwargs)


def _records(n: int, start: int = 1, **extra: str) -> list[Record]:
    return [
        Record(i, str(i), {"email": f"lead{i}@example.com", "firstname": f"F{i}", **extra})
        for i in range(start, start + n)
    ]


def _upserts(api: HubSpotApi) -> list[int]:
    return [n for method, path, n in api.calls if path == UPSERT]


def test_upsert_creates_then_updates_the_same_record(api: HubSpotApi) -> None:
    adapter = _adapter(api)
    [first] = adapter.upsert([Record(7, "7", {"email": "ada@example.com", "firstname": "Ada"})])
    [second] = adapter.upsert([Record(7, "7", {"firstname": "Adele"})])
    assert first.ok and first.created is True and first.crm_id
    assert second.ok and second.created is False and second.crm_id == first.crm_id
    assert list(api.contacts) == ["7"]
    assert api.contacts["7"]["firstname"] == "Adele"
    assert api.contacts["7"]["email"] == "ada@example.com"


def test_records_go_in_batches_of_100(api: HubSpotApi) -> None:
    adapter = _adapter(api)
    outcomes = adapter.upsert(_records(250))
    assert _upserts(api) == [100, 100, 50]
    assert len(outcomes) == 250 and all(o.ok and o.created for o in outcomes)
    assert {o.lead_id for o in outcomes} == set(range(1, 251))
    assert len(api.contacts) == 250
    assert (adapter.usage.calls, adapter.usage.records) == (3, 250)
    assert adapter.usage.limit["max"] == 100 and adapter.usage.limit["remaining"] == 97


def test_limiter_keeps_to_the_calls_per_ten_seconds() -> None:
    time = FakeTime()
    with HubSpotApi(token="pat-test", calls_per_10s=5, clock=time.clock) as api:
        adapter = _adapter(api, calls_per_10s=5, clock=time.clock, sleep=time.sleep)
        for _ in range(23):
            adapter.properties()
        times = api.call_times
    assert len(times) == 23 and api.throttled == 0
    busiest = max(sum(1 for u in times if t <= u < t + 10) for t in times)
    assert busiest == 5
    assert time.now - 1000.0 >= 40  # 23 calls at 5 per 10 s span four full windows
    assert adapter.usage.waited_seconds == pytest.approx(sum(time.slept))


def test_429_with_retry_after_is_waited_out(api: HubSpotApi) -> None:
    time = FakeTime()
    adapter = _adapter(api, clock=time.clock, sleep=time.sleep)
    api.fail_next(2, status=429, retry_after=3)
    assert "leadflow_id" in adapter.properties()
    assert time.slept == [3.0, 3.0]
    usage = adapter.usage
    assert (usage.calls, usage.throttled, usage.waited_seconds) == (3, 2, 6.0)


def test_429_past_max_wait_raises_rate_limited(api: HubSpotApi) -> None:
    time = FakeTime()
    api.limit(2)  # the server's own rolling window, in real seconds
    adapter = _adapter(api, clock=time.clock, sleep=time.sleep, max_wait_seconds=5)
    adapter.properties()
    adapter.properties()
    with pytest.raises(RateLimited) as caught:
        adapter.properties()
    assert caught.value.status == 429 and caught.value.retry_after >= 8
    assert "ten_secondly_rolling" in str(caught.value)
    assert time.slept == [] and adapter.usage.throttled == 1 and api.throttled == 1

    api.fail_next(1, status=429)  # no Retry-After: HubSpot's interval is the hint
    api.limit(100)
    with pytest.raises(RateLimited) as caught:
        adapter.properties()
    assert caught.value.retry_after == 10.0


def test_wrong_or_expired_token_is_an_auth_error(api: HubSpotApi) -> None:
    with pytest.raises(AuthError) as caught:
        HubSpotAdapter(access_token="pat-wrong", base_url=api.url).owners()
    assert caught.value.status == 401 and "token" in str(caught.value)
    adapter = _adapter(api)
    adapter.owners()
    api.token = "pat-rotated"
    with pytest.raises(AuthError, match="expired"):
        adapter.upsert(_records(1))
    assert api.contacts == {}


def test_missing_scope_is_an_auth_error_naming_the_scope(api: HubSpotApi) -> None:
    api.scopes.discard("crm.objects.contacts.write")
    adapter = _adapter(api)
    assert adapter.read(["1"], ["email"]) == {}  # reading is still allowed
    with pytest.raises(AuthError) as caught:
        adapter.upsert(_records(3))
    assert caught.value.status == 403
    assert "crm.objects.contacts.write" in str(caught.value)


def test_a_bad_owner_fails_only_its_record(api: HubSpotApi) -> None:
    owner = api.add_owner("rep@example.com", "Rae", "Peters")
    records = _records(4, hubspot_owner_id=owner)
    records.insert(2, Record(99, "99", {"email": "x@example.com", "hubspot_owner_id": "123"}))
    outcomes = {o.lead_id: o for o in _adapter(api).upsert(records)}
    assert _upserts(api) == [5]  # one call: HubSpot answered 207 Multi-Status
    bad = outcomes.pop(99)
    assert not bad.ok and bad.permanent and "123 is not a valid owner id" in bad.error
    assert all(o.ok for o in outcomes.values())
    assert sorted(api.contacts) == ["1", "2", "3", "4"]
    assert api.contacts["1"]["hubspot_owner_id"] == owner


def test_a_rejected_batch_is_split_until_the_bad_record_is_alone(api: HubSpotApi) -> None:
    records = _records(8)
    records[5] = Record(6, "6", {"email": "ann@broken"})  # HubSpot rejects the whole batch
    adapter = _adapter(api)
    outcomes = {o.lead_id: o for o in adapter.upsert(records)}
    bad = outcomes.pop(6)
    assert not bad.ok and bad.permanent and "INVALID_EMAIL" in bad.error
    assert "ann@broken" not in bad.error and "a…@broken" in bad.error  # masked
    assert all(o.ok for o in outcomes.values()) and len(api.contacts) == 7
    assert _upserts(api) == [8, 4, 4, 2, 1, 1, 2]
    assert adapter.usage.calls == 7 and adapter.usage.records == 8


def test_an_unknown_property_fails_the_records_that_carry_it(api: HubSpotApi) -> None:
    records = _records(6)
    records[1] = Record(2, "2", {"email": "b@example.com", "favourite_colour": "teal"})
    outcomes = {o.lead_id: o for o in _adapter(api).upsert(records)}
    bad = outcomes.pop(2)
    assert not bad.ok and bad.permanent
    assert "favourite_colour" in bad.error and "does not exist" in bad.error
    assert all(o.ok for o in outcomes.values()) and "2" not in api.contacts
    assert _upserts(api) == [6, 5]  # the rest resent at once, no halving


def test_a_non_unique_id_property_fails_the_call_without_splitting(api: HubSpotApi) -> None:
    adapter = HubSpotAdapter(access_token="pat-test", base_url=api.url, id_property="firstname")
    with pytest.raises(CrmError) as caught:
        adapter.upsert(_records(10))
    assert caught.value.status == 400 and caught.value.permanent
    assert "non-unique firstname" in str(caught.value)
    assert _upserts(api) == [10] and api.contacts == {}


def test_server_errors_and_no_answer_are_transient(api: HubSpotApi) -> None:
    adapter = _adapter(api)
    api.fail_next(1, status=503, path_contains="batch/upsert")
    with pytest.raises(CrmError) as caught:
        adapter.upsert(_records(2))
    assert caught.value.status == 503 and not caught.value.permanent
    assert not isinstance(caught.value, AuthError)
    assert all(o.ok for o in adapter.upsert(_records(2)))

    gone = HubSpotAdapter(access_token="t", base_url="http://127.0.0.1:9", timeout_seconds=2)
    with pytest.raises(CrmError) as caught:
        gone.properties()
    assert caught.value.status is None and not caught.value.permanent
    assert gone.usage.calls == 1  # the library's own retries are off


def test_read_returns_the_records_hubspot_has(api: HubSpotApi) -> None:
    adapter = _adapter(api)
    adapter.upsert(_records(120))
    api.human_edit("5", firstname="Edited")
    found = adapter.read([str(i) for i in range(1, 121)] + ["404"], ["firstname", "email"])
    assert len(found) == 120 and "404" not in found
    assert found["5"]["firstname"] == "Edited"
    assert found["5"]["id"] == api.contacts["5"]["hs_object_id"]
    assert found["7"]["email"] == "lead7@example.com"
    reads = [n for _, path, n in api.calls if path.endswith("/batch/read")]
    assert reads == [100, 21]


def test_owners_are_read_over_several_pages(api: HubSpotApi) -> None:
    ids = {api.add_owner(f"Rep{i}@Example.com", "R", str(i)) for i in range(230)}
    owners = _adapter(api).owners()
    assert len(owners) == 230 and set(owners.values()) == ids
    assert "rep17@example.com" in owners  # lower-cased
    assert [p for _, p, _ in api.calls] == ["/crm/v3/owners"] * 3


def test_changed_since_pages_oldest_first_and_resumes_from_a_cursor(api: HubSpotApi) -> None:
    adapter = _adapter(api)
    adapter.search_limit = 20
    adapter.upsert(_records(50))
    api.human_edit("3", firstname="Changed")
    seen = list(adapter.changed_since(None, ["firstname"]))
    assert [r["leadflow_id"] for r, _ in seen][-1] == "3"
    assert len({r["id"] for r, _ in seen}) == len(seen) == 50
    times = [r["modified_at"] for r, _ in seen]
    assert times == sorted(times)
    assert sum(1 for _, p, _ in api.calls if p.endswith("/search")) == 3

    cursor = seen[-2][1]
    again = list(adapter.changed_since(cursor, ["firstname"]))
    assert [(r["leadflow_id"], r["firstname"]) for r, _ in again] == [("3", "Changed")]
    assert again[0][1] == api.contacts["3"]["lastmodifieddate"]
    assert list(adapter.changed_since(again[0][1], ["firstname"])) == []


def test_changed_since_restarts_past_the_search_cap(api: HubSpotApi) -> None:
    adapter = _adapter(api)
    adapter.upsert(_records(120))
    api.search_cap = 50  # HubSpot's is 10,000 results a query
    adapter.search_limit = 20
    before = len(api.calls)
    seen = [r["leadflow_id"] for r, _ in adapter.changed_since(None, ["email"])]
    assert seen == [str(i) for i in range(1, 121)]  # each once, oldest first
    searches = len(api.calls) - before  # paging past the cap got HubSpot's 400 twice

    adapter.search_cap = 50  # an adapter that knows the cap restarts before the 400
    before = len(api.calls)
    assert [r["leadflow_id"] for r, _ in adapter.changed_since(None, ["email"])] == seen
    assert len(api.calls) - before == searches - 2


def test_properties_and_probe(api: HubSpotApi) -> None:
    api.add_property("lead_score")
    api.add_owner("rep@example.com")
    adapter = _adapter(api)
    names = adapter.properties()
    assert {"leadflow_id", "email", "hubspot_owner_id", "lead_score"} <= names
    line = adapter.probe()
    assert api.url in line and "1 owners" in line and "limit 100/10s" in line


def test_searches_keep_to_hubspots_five_a_second() -> None:
    time = FakeTime()
    with HubSpotApi(token="pat-test", clock=time.clock) as api:
        adapter = _adapter(api, clock=time.clock, sleep=time.sleep)
        adapter.upsert(_records(30))
        adapter.search_limit = 2
        assert len(list(adapter.changed_since(None, ["email"]))) == 30
        calls = zip(api.call_times, api.calls, strict=True)
        times = [t for t, (_, path, _) in calls if path.endswith("/search")]
    assert len(times) == 15
    assert max(sum(1 for u in times if t <= u < t + 1) for t in times) == 5
