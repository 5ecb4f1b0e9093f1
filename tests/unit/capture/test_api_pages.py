"""REST API pages against a real HTTP server on loopback (pytest-httpserver): Retry-After
honoured, retries bounded, a page that is not JSON is an error."""

import pytest
from werkzeug import Response

from leadflow.capture import sources
from leadflow.capture.rules import ApiSource


def test_retry_after_is_honoured_and_retries_are_bounded(httpserver):
    import requests

    httpserver.expect_ordered_request("/x").respond_with_response(
        Response("", status=429, headers={"Retry-After": "7"})
    )
    httpserver.expect_ordered_request("/x").respond_with_response(Response("", status=503))
    httpserver.expect_ordered_request("/x").respond_with_json({"ok": True})
    waits: list[float] = []
    response = sources.get_with_retries(
        requests.Session(),
        httpserver.url_for("/x"),
        params=None,
        headers={},
        timeout=5,
        max_retries=3,
        backoff=0.5,
        max_backoff=30,
        sleep=waits.append,
    )
    assert response.json() == {"ok": True}
    assert waits[0] == 7.0 and 0.25 <= waits[1] <= 1.0

    httpserver.clear()
    httpserver.expect_request("/down").respond_with_response(Response("", status=500))
    with pytest.raises(sources.ApiError, match="HTTP 500 after 3 attempts"):
        sources.get_with_retries(
            requests.Session(),
            httpserver.url_for("/down"),
            params=None,
            headers={},
            timeout=5,
            max_retries=2,
            backoff=0.0,
            max_backoff=0,
            sleep=waits.append,
        )


def test_api_page_that_is_not_json_is_an_error(httpserver):
    httpserver.expect_request("/leads").respond_with_data(
        "<html>maintenance</html>", content_type="text/html"
    )
    with pytest.raises(sources.ApiError, match="not JSON"):
        list(sources.fetch_pages(httpserver.url_for("/leads"), ApiSource(), token=None, since=None))
