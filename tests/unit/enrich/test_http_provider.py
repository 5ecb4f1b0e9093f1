"""The firmographics HTTP client against a real server on loopback."""

import json

import pytest
from werkzeug import Response

from blocks.firmographics import HttpFirmographics
from leadflow import http
from leadflow.enrich.firmographics import HttpProvider, LookupStats


def test_rate_limiter_spaces_calls_evenly():
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = http.RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.wait()
    assert slept == [0.25, 0.25, 0.25, 0.25]


def test_breaker_opens_after_consecutive_failures_and_successes_reset_it():
    breaker = http.CircuitBreaker(3)
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert not breaker.opened
    breaker.failure()
    assert breaker.opened


def test_batch_endpoint_one_call_per_batch_of_domains(httpserver):
    seen: list[list[str]] = []

    def answer(request):
        domains = request.get_json()["domains"]
        seen.append(domains)
        results = {
            d: ({"industry": "Software", "employees": 10} if d != "ghost.com" else None)
            for d in domains
        }
        return Response(json.dumps({"results": results}), content_type="application/json")

    httpserver.expect_request("/batch", method="POST").respond_with_handler(answer)
    config = HttpFirmographics(
        base_url=httpserver.url_for(""), batch_path="/batch", batch_size=2, concurrency=1
    )
    stats = LookupStats()
    out = HttpProvider(config).lookup(["a.com", "b.com", "c.com", "ghost.com"], stats)
    assert seen == [["a.com", "b.com"], ["c.com", "ghost.com"]] and stats.calls == 2
    assert out["a.com"].employees == 10 and out["ghost.com"].status == "not_found"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "notes"),
    [
        (
            "<html>down for maintenance</html>",
            "text/html",
            "invalid",
            {"response": "not JSON (text/html)"},
        ),
        (
            '{"employees": -20, "revenue": "1M"}',
            "application/json",
            "found",
            {"employees": "-20 is negative", "revenue": "'1M' is text, not a number"},
        ),
        (
            "[1, 2, 3]",
            "application/json",
            "invalid",
            {"response": "expected a JSON object, got list"},
        ),
    ],
)
def test_garbage_answers_are_recorded_not_raised(httpserver, body, content_type, status, notes):
    httpserver.expect_request("/companies/x.com").respond_with_data(body, content_type=content_type)
    config = HttpFirmographics(base_url=httpserver.url_for(""))
    out = HttpProvider(config).lookup(["x.com"], LookupStats())["x.com"]
    assert (out.status, out.notes) == (status, notes)
