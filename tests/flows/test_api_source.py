"""REST API capture against a real HTTP server on loopback (pytest-httpserver)."""

import json

import pytest
from werkzeug import Response

from helpers import assert_ledger_ok, ingest, table, write

RECORDS = [
    {"id": "c-1", "email": "a@x.com", "first_name": "A", "updated_at": "2026-01-01T00:00:00Z"},
    {"id": "c-2", "email": "b@x.com", "first_name": "B", "updated_at": "2026-01-02T00:00:00Z"},
    {"id": "c-3", "email": "c@x.com", "first_name": "C", "updated_at": "2026-01-03T00:00:00Z"},
]


class FlakyCrm:
    """Pages of two records; answers 429 then 500 before the first page of each run."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.failures_left = 2

    def __call__(self, request):
        self.calls.append(dict(request.args))
        if request.headers.get("Authorization") != "Bearer s3cret":
            return Response("no", status=401)
        if self.failures_left == 2:
            self.failures_left -= 1
            return Response("slow down", status=429, headers={"Retry-After": "0"})
        if self.failures_left == 1:
            self.failures_left -= 1
            return Response("oops", status=500)
        since = request.args.get("updated_since")
        fresh = [r for r in RECORDS if since is None or r["updated_at"] > since]
        start = int(request.args.get("cursor", 0))
        page = fresh[start : start + 2]
        following = f"/leads?cursor={start + 2}" if start + 2 < len(fresh) else None
        return Response(
            json.dumps({"data": page, "next": following}), content_type="application/json"
        )


@pytest.fixture
def crm_token():
    from prefect.blocks.system import Secret

    Secret(value="s3cret").save("crm-token", overwrite=True)
    return "crm-token"


def test_paginated_api_with_retries_token_and_cursor(database_url, tmp_path, httpserver, crm_token):
    crm = FlakyCrm()
    httpserver.expect_request("/leads").respond_with_handler(crm)
    mapping = write(
        tmp_path / "crm.yaml",
        f"""
source: crm
external_id: id
columns: {{email: email, first_name: first_name}}
api:
  records: data
  next: next
  since_param: updated_since
  cursor_field: updated_at
  token_block: {crm_token}
  backoff_seconds: 0.01
  page_size: 2
""",
    )
    state, data = ingest(httpserver.url_for("/leads"), source="crm", mapping=mapping)
    assert state.is_completed(), state.message
    assert (data["received"], data["inserted"]) == (3, 3)
    assert len(data["batch_ids"]) == 2  # one batch per page
    assert [c.get("cursor") for c in crm.calls] == [None, None, None, "2"]
    leads = table(database_url, "leads")
    assert sorted(leads.external_id) == ["crm:c-1", "crm:c-2", "crm:c-3"]
    assert table(database_url, "source_cursors").cursor.tolist() == ["2026-01-03T00:00:00Z"]
    batches = table(database_url, "capture_batches")
    assert set(batches.kind) == {"api"} and batches.uri.iloc[1].endswith("cursor=2")

    # The next run asks only for what changed since the cursor: nothing here.
    crm.failures_left = 0
    crm.calls.clear()
    state, data = ingest(httpserver.url_for("/leads"), source="crm", mapping=mapping)
    assert state.is_completed() and data["received"] == 0
    assert crm.calls[0]["updated_since"] == "2026-01-03T00:00:00Z"
    assert_ledger_ok(database_url)


def test_events_from_an_api_keep_their_cursor(database_url, tmp_path, httpserver):
    """Engagement events pulled from an API advance the source cursor like leads do, so
    the next run asks only for what is new."""
    leads = write(tmp_path / "leads.csv", "email,first_name\na@x.com,A\nb@x.com,B\n")
    assert ingest(leads, source="web")[0].is_completed()
    events = [
        {"email": "a@x.com", "type": "email_open", "at": "2026-01-01T10:00:00Z"},
        {"email": "b@x.com", "type": "page_view", "at": "2026-01-02T10:00:00Z"},
    ]
    calls: list[dict] = []

    def esp(request):
        calls.append(dict(request.args))
        since = request.args.get("since")
        fresh = [e for e in events if since is None or e["at"] > since]
        return Response(json.dumps({"data": fresh}), content_type="application/json")

    httpserver.expect_request("/events").respond_with_handler(esp)
    mapping = write(
        tmp_path / "esp.yaml",
        """
source: esp
target: events
columns: {email: email, type: event_type, at: occurred_at}
api:
  records: data
  since_param: since
  cursor_field: at
""",
    )
    state, data = ingest(httpserver.url_for("/events"), source="esp", mapping=mapping)
    assert state.is_completed(), state.message
    assert (data["received"], data["inserted"]) == (2, 2)
    assert table(database_url, "source_cursors").cursor.tolist() == ["2026-01-02T10:00:00Z"]

    state, data = ingest(httpserver.url_for("/events"), source="esp", mapping=mapping)
    assert state.is_completed() and data["received"] == 0
    assert calls[-1]["since"] == "2026-01-02T10:00:00Z"
    assert len(table(database_url, "engagement_events")) == 2
    assert_ledger_ok(database_url)
