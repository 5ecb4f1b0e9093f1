"""Capture you can trust (issue 8), in real processes: an ingest SIGKILLed mid-file resumes
and ends as a clean run, two ingests of the same file at once store it once, a headerless
file prints no personal data, output into a closed pipe is not an error. The checks run in
process are in flows/test_capture_trust.py."""

from __future__ import annotations

import json

import pytest

from helpers import HEADER, assert_ledger_ok, bad_files, ingest, personal_data_in, table, write

# --------------------------------------------------------------------------- 2, 3. processes

NOW = "2025-03-01T12:00:00Z"


def lead_file(path, records: int):
    """A file whose records merge across chunks and some of which are quarantined."""
    rows = []
    for i in range(records):
        email = f"bad{i}@@x" if i % 53 == 7 else f"p{i % (records * 3 // 4)}@firm{i % 90}.com"
        rows.append(f"{email},F{i},L{i},Firm {i % 90},,,US,,web,2024-01-{1 + i % 28:02d}\n")
    return write(path, HEADER + "".join(rows))


def cli_process(database_url: str, path, *extra: str, batch_size: int = 100):
    import os
    import subprocess
    import sys

    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "LEADFLOW_DATABASE_URL": database_url,
        "LEADFLOW_BATCH_SIZE": str(batch_size),
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    command = [sys.executable, "-m", "app.cli", "ingest", str(path), "--source", "web"]
    return subprocess.Popen(
        [*command, "--now", NOW, "--max-quarantine-rate", "0.5", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def snapshot(url: str) -> dict[str, list]:
    """What a capture leaves behind, without ids and wall-clock times."""

    def rows(name: str, columns: list[str], order: list[str]) -> list:
        frame = table(url, name)[columns].sort_values(order).astype(str)
        return frame.to_numpy().tolist()

    lead_columns = ["email", "first_name", "last_name", "company", "country", "source"]
    return {
        "leads": rows("leads", [*lead_columns, "created_at", "attributes", "status"], ["email"]),
        "events": rows("lead_events", ["kind", "record_no", "to_status", "details"], ["record_no"]),
        "quarantine": rows("quarantine", ["record_no", "record", "reasons"], ["record_no"]),
        "batches": rows(
            "capture_batches",
            ["status", "received", "inserted", "merged", "quarantined"],
            ["status"],
        ),
        "chunks": rows(
            "capture_chunks",
            ["chunk_no", "status", "received", "inserted", "merged", "quarantined"],
            ["chunk_no"],
        ),
        "raw": rows("raw_captures", ["chunk_no", "records", "content_hash"], ["chunk_no"]),
    }


def clean_run(tmp_path, path) -> dict[str, list]:
    from datetime import datetime

    from leadflow import store

    url = f"sqlite:///{tmp_path / 'clean.db'}"
    store.upgrade(url)
    state, _ = ingest(
        path,
        source="web",
        now=datetime.fromisoformat(NOW),
        database_url=url,
        chunk_size=100,
        max_quarantine_rate=0.5,
    )
    assert state.is_completed(), state.message
    return snapshot(url)


def committed_chunks(url: str) -> int:
    from sqlalchemy import func, select

    from leadflow import store
    from leadflow import tables as t

    with store.get_engine(url).connect() as conn:
        return conn.execute(select(func.count()).select_from(t.capture_chunks)).scalar_one()


@pytest.mark.flow
def test_an_ingest_killed_mid_file_resumes_and_ends_as_a_clean_run(sqlite_url, tmp_path):
    # SQLite only, to keep the test short: resuming is the same SQL on both databases, and
    # the lock that tells a dead batch from a live one is tested on both below.
    database_url = sqlite_url
    import random
    import signal
    import time

    path = lead_file(tmp_path / "leads.csv", 2000)  # 20 chunks of 100
    expected = clean_run(tmp_path, path)
    rng = random.Random()
    kills = []
    for _ in range(2):
        already = committed_chunks(database_url)
        target = already + rng.randint(1, 6)
        process = cli_process(database_url, path)
        deadline = time.monotonic() + 60
        while committed_chunks(database_url) < target and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills.append(committed_chunks(database_url))
    assert kills[-1] < 20, f"the runs finished before they were killed: {kills}"
    assert table(database_url, "capture_batches").status.tolist() == ["running"]
    from leadflow import audit, store

    with store.get_engine(database_url).connect() as conn:
        problems = audit.run_audit(conn).problems
    assert any("still 'running' but its run has died" in p for p in problems), problems

    process = cli_process(database_url, path, "--json")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["resumed"] == [1] and summary["received"] == 2000 - 100 * kills[-1]
    assert snapshot(database_url) == expected, f"killed after chunks {kills}"
    assert_ledger_ok(database_url)


@pytest.mark.flow
def test_two_ingests_of_the_same_file_at_once_store_it_once(database_url, tmp_path):
    path = lead_file(tmp_path / "leads.csv", 1000)
    expected = clean_run(tmp_path, path)
    first, second = cli_process(database_url, path), cli_process(database_url, path)
    for process in (first, second):
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    found = snapshot(database_url)
    assert sorted(found["batches"]) == sorted(
        [*expected["batches"], ["duplicate", "0", "0", "0", "0"]]
    )
    assert {k: v for k, v in found.items() if k != "batches"} == {
        k: v for k, v in expected.items() if k != "batches"
    }
    assert_ledger_ok(database_url)


def test_a_headerless_file_in_a_real_process_prints_no_personal_data(sqlite_url, tmp_path):
    path = bad_files(tmp_path)[0]
    process = cli_process(sqlite_url, path)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert personal_data_in(out + err) == [] and len(err.strip().splitlines()) == 1, err


def test_output_into_a_closed_pipe_is_not_an_error(sqlite_url):
    import os
    import subprocess
    import sys

    env = {**os.environ, "LEADFLOW_DATABASE_URL": sqlite_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "audit"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # like `| head` that has read what it wanted
    err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert "BrokenPipeError" not in err and process.returncode == 0, err
