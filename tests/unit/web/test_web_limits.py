"""POST /leads hardened (issue 19 item 5), the pure part: limits from the environment, the
body read no further than the limit, the nesting scan. Served over HTTP in
e2e/test_web_hardening.py."""

from __future__ import annotations

import asyncio

import pytest

from app.web import Limits, deeper_than, read_body
from leadflow.config import ConfigError

# --------------------------------------------------------------------------- unit


@pytest.mark.unit
def test_limits_come_from_the_environment_and_bad_values_name_the_variable():
    assert Limits.from_env({}) == Limits()
    assert Limits() == Limits(65536, 200, 8192, 8, 20.0, 40, 100.0, 1000, 5.0)
    got = Limits.from_env(
        {"LEADFLOW_SERVE_MAX_BODY_BYTES": "1000", "LEADFLOW_SERVE_CLIENT_RATE": "0"}
    )
    assert got.max_body_bytes == 1000 and got.client_rate == 0 and got.max_fields == 200
    for name, value in [
        ("LEADFLOW_SERVE_MAX_FIELDS", "0"),
        ("LEADFLOW_SERVE_MAX_DEPTH", "2.5"),
        ("LEADFLOW_SERVE_TOKEN_RATE", "-1"),
        ("LEADFLOW_SERVE_CLIENT_BURST", "lots"),
        ("LEADFLOW_SERVE_MAX_VALUE_BYTES", "inf"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Limits.from_env({name: value})


@pytest.mark.unit
def test_the_body_is_read_no_further_than_the_limit():
    from starlette.requests import Request

    from app.web import Refused

    async def run(headers: list[tuple[bytes, bytes]], chunks: int) -> tuple[int, str]:
        calls = 0

        async def receive() -> dict:
            nonlocal calls
            calls += 1
            return {"type": "http.request", "body": b"x" * 300, "more_body": calls < chunks}

        request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
        try:
            await read_body(request, 1000)
        except Refused as refused:
            return calls, f"{refused.status} {refused.detail}"
        return calls, "read"

    # 100 chunks of 300 bytes, no Content-Length: the fourth one is over; no fifth is read.
    assert asyncio.run(run([], 100)) == (4, "413 body larger than 1000 bytes")
    # A Content-Length over the limit: refused before a single byte is read.
    assert asyncio.run(run([(b"content-length", b"50000000")], 100)) == (
        0,
        "413 body larger than 1000 bytes",
    )
    assert asyncio.run(run([(b"content-length", b"-1")], 1))[1].startswith("400")
    assert asyncio.run(run([], 3)) == (3, "read")  # 900 bytes


@pytest.mark.unit
def test_the_nesting_scan_is_flat_and_ignores_brackets_in_strings():
    assert deeper_than("[" * 100_000, 8)  # no RecursionError, and fast
    assert not deeper_than('{"a": "[[[[[[[[[[[[[[[[[[[[\\"[[[[[["}', 2)
    assert deeper_than('{"a": "\\\\", "b": [[[1]]]}', 3)  # an escaped backslash ends no string
    assert not deeper_than('{"a": {"b": {"c": [1]}}}', 4)
    assert deeper_than('{"a": {"b": {"c": [1]}}}', 3)
