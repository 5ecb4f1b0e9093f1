"""``bench/booking.py`` run small as a process (a temporary SQLite file, and a throwaway
PostgreSQL schema when LEADFLOW_TEST_DATABASE_URL is set): the app served on loopback, every
lead's page read and one slot posted, planned clashes answered 409, nothing booked twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import PG_URL, ROOT

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _prefect_server(no_prefect_api: None) -> None:
    """Overrides e2e/conftest.py's: the bench talks to no Prefect API."""


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_bench_booking_small(database: str, tmp_path) -> None:
    argv = [sys.executable, str(ROOT / "bench" / "booking.py"), "--leads", "8"]
    argv += ["--concurrency", "4"]
    if database == "postgres":
        if not PG_URL:
            pytest.skip("LEADFLOW_TEST_DATABASE_URL not set")
        argv += ["--database-url", PG_URL]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env |= {"LEADFLOW_HOME": str(tmp_path), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert (result["leads"], result["concurrency"], result["reps"]) == (8, 4, 5)
    assert result["errors"] == 0, result["error_kinds"]
    assert result["double_booked"] == 0 and result["links_twice"] == 0
    # 8 leads over 5 reps: three reps have two leads, the second picking the first's slot.
    assert result["clashes_planned"] == 3
    assert (result["booked"], result["taken"]) == (5, 3)
    assert result["meetings_in_db"] == result["booked"]
    for phase in ("page_ms", "book_ms", "healthz_ms"):
        figures = result[phase]
        assert 0 < figures["p50"] <= figures["p95"] <= figures["max"], (phase, figures)
    assert result["page_p95_over_healthz"] > 0 and result["book_p95_over_healthz"] > 0
