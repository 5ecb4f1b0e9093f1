"""The claim queue and the hop runner on SQLite and PostgreSQL: concurrent claimants, a
worker SIGKILLed mid-batch, a connection dropped mid-hop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, func, select, text

from leadflow import lifecycle, queue, store
from leadflow import tables as t
from leadflow.lifecycle import Status
from tasks import hops

from conftest import write
from helpers import assert_ledger_ok, ingest

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
CAPTURED = (Status.CAPTURED.value,)


def admit(engine, n: int) -> list[int]:
    with engine.begin() as conn:
        ids = store.allocate_ids(conn, t.leads, n)
        rows = pd.DataFrame(
            {
                "id": ids,
                "email": [f"u{i}@acme{i % 7}.com" for i in ids],
                "country": "US",
                "captured_at": pd.Timestamp(NOW),
                "last_seen_at": pd.Timestamp(NOW),
                "updated_at": pd.Timestamp(NOW),
            }
        )
        lifecycle.admit(conn, rows, actor="test", at=NOW)
    return [int(i) for i in ids]


def lease(engine, size: int) -> tuple[str, int, int]:
    return queue.take_lease(engine, queue.Request("enrich", CAPTURED, size, queue.Strategy.LEASE))


def claimed(engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.leads.c.claimed_by, func.count())
            .where(t.leads.c.claimed_by.is_not(None))
            .group_by(t.leads.c.claimed_by)
        ).all()
    return dict(rows)


def test_a_dead_lease_is_taken_over_and_a_live_one_is_not(engine, monkeypatch):
    monkeypatch.setenv("LEADFLOW_CLAIM_TTL_SECONDS", "1")
    admit(engine, 10)
    dead, count, _ = lease(engine, 6)  # its holder "dies": nobody renews or releases it
    assert count == 6
    request = queue.Request("enrich", CAPTURED, 100, queue.Strategy.LEASE)
    with queue.claim(engine, request) as live:  # the heartbeat renews this one
        assert live is not None and live.taken_over == 0
        time.sleep(1.6)
        token, count, taken = lease(engine, 100)
        assert taken == 6 and count == 6  # the dead claim's leads, not the live one's
    assert dead not in claimed(engine)
    time.sleep(1.2)  # and now that one's holder "dies" too
    with engine.connect() as conn:
        report = queue.list_claims(conn)
    assert list(report["token"]) == [token] and report["dead"].tolist() == [True]
    with engine.begin() as conn:
        assert queue.release_dead(conn) == 6
    assert claimed(engine) == {}


def test_two_claimants_never_share_a_lead(engine):
    ids = admit(engine, 400)
    tokens: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                tokens.append(lease(engine, 30)[0])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    held = claimed(engine)
    assert sum(held.values()) == len(ids) and set(held) <= set(tokens)


def test_id_ranges_are_disjoint_between_concurrent_transactions(engine):
    if not store.is_postgres(engine):
        pytest.skip("SQLite has one writer: transactions cannot overlap")
    admit(engine, 50)
    request = queue.Request("score", CAPTURED, 20, queue.Strategy.ID_RANGE)
    with queue.claim(engine, request) as first, queue.claim(engine, request) as second:
        assert first is not None and second is not None
        assert not set(first.ids) & set(second.ids)
    assert sorted(first.ids + second.ids) == sorted(set(first.ids) | set(second.ids))


def test_serial_claims_take_turns(engine):
    if not store.is_postgres(engine):
        pytest.skip("SQLite has one writer already")
    admit(engine, 5)
    request = queue.Request("route", CAPTURED, 10, queue.Strategy.SERIAL)
    order: list[str] = []

    def second() -> None:
        with queue.claim(engine, request) as batch:
            order.append(f"second:{len(batch.ids) if batch else 0}")

    with queue.claim(engine, request) as batch:
        assert batch is not None and len(batch.ids) == 5
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        order.append("first done")
    thread.join()
    assert order == ["first done", "second:5"]  # it waited for the first to end


# --------------------------------------------------------------------------- runner, real kill

WORKER = textwrap.dedent(
    """
    import sys, time
    from dataclasses import replace
    from datetime import datetime, UTC
    from leadflow import store
    from tasks import enrich, hops

    def slow(leads, lookups, context, now):
        time.sleep(60)  # killed in here, with its batch claimed
        return enrich.enrich_batch(leads, lookups, context, now)

    hop = replace(enrich.HOP, transform=slow)
    context = enrich.EnrichContext(provider=None, accounts=enrich.build_index(
        __import__("pandas").DataFrame(columns=["id", "name", "domain", "aliases", "owner_rep_id"]),
        enrich.load_lists().legal_suffixes), threshold=0.9, min_name_length=3)
    hops.run_batch(hop, context, store.get_engine(sys.argv[1]), now=datetime.now(UTC))
    """
)


@pytest.mark.flow
def test_a_worker_killed_mid_batch_is_finished_by_the_next_run(database_url, monkeypatch, tmp_path):
    engine = store.get_engine(database_url)
    rows = "".join(f"lead{i}@firm{i % 40}.com,Lead {i},US\n" for i in range(300))
    state, _ = ingest(write(tmp_path / "leads.csv", "email,company,country\n" + rows))
    assert state.is_completed()
    with engine.connect() as conn:
        ids = sorted(conn.execute(select(t.leads.c.id)).scalars())
    env = {**os.environ, "LEADFLOW_CLAIM_TTL_SECONDS": "2", "LEADFLOW_BATCH_SIZE": "200"}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, database_url], env=env)
    try:
        deadline = time.monotonic() + 60
        while not claimed(engine) and time.monotonic() < deadline:
            assert worker.poll() is None, "the worker ended before claiming"
            time.sleep(0.1)
        assert sum(claimed(engine).values()) == 200
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    monkeypatch.setenv("LEADFLOW_CLAIM_TTL_SECONDS", "2")
    time.sleep(2.5)  # the lease runs out: nobody renews it
    from flows.enrich import enrich as enrich_flow

    state = enrich_flow(now=NOW, database_url=database_url, return_state=True)
    summary = state.result()
    assert state.is_completed() and summary["taken_over"] == 200
    assert "took over 200" in state.message
    assert summary["enriched"] == 300 and claimed(engine) == {}
    with engine.connect() as conn:
        moves = conn.execute(
            select(t.lead_events.c.lead_id, func.count())
            .where(t.lead_events.c.to_status == "enriched")
            .group_by(t.lead_events.c.lead_id)
        ).all()
    assert sorted(lead for lead, _ in moves) == ids and {n for _, n in moves} == {1}
    assert_ledger_ok(database_url)


@pytest.mark.flow
def test_a_dropped_connection_is_retried_and_a_lasting_one_named(database_url):
    if not store.is_postgres(store.get_engine(database_url)):
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    from tasks import score_hop, scoring

    engine = store.get_engine(database_url)
    admin = create_engine(store.with_driver(os.environ["LEADFLOW_TEST_DATABASE_URL"]))
    drops = {"left": 1}
    backend: dict[str, int] = {}

    def fetch(conn, leads, context, now):  # the claim's own transaction
        backend["pid"] = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        return score_hop.load_events(conn, leads, context, now)

    def dropping(leads, events, context, now):
        if drops["left"]:
            drops["left"] -= 1
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend["pid"]})
                # The signal is asynchronous: on a loaded machine the batch could otherwise
                # commit before its backend is gone. Wait until it is.
                for _ in range(100):
                    gone = not conn.execute(
                        text("SELECT 1 FROM pg_stat_activity WHERE pid = :p"), {"p": backend["pid"]}
                    ).first()
                    if gone:
                        break
                    time.sleep(0.05)
        return score_hop.score_batch(leads, events, context, now)

    def enriched(n: int) -> None:
        ids = admit(engine, n)
        with engine.begin() as conn:
            changes = pd.DataFrame({"id": ids, "from_status": "captured", "to_status": "enriched"})
            lifecycle.apply(conn, changes, actor="test", at=NOW)

    rules, version, rules_text = scoring.rule_source(None)
    context = score_hop.ScoreContext(rules, version, rules_text)
    hop = replace(score_hop.SCORE_NEW, fetch=fetch, transform=dropping)

    from prefect import flow

    @flow
    def run() -> hops.HopRun:
        return hops.drain(hop, context, database_url=database_url, now=NOW, publish=False)

    enriched(20)
    first = run()
    assert first.failure is None and first.stats["scored"] == 20  # second try went through
    enriched(5)
    drops["left"] = 10  # more drops than retries
    second = run()
    assert second.failure and "OperationalError" in second.failure, second.failure
    assert "terminat" in second.failure or "closed" in second.failure  # the real cause
    assert "PendingRollbackError" not in second.failure
    with engine.connect() as conn:
        waiting = conn.execute(
            select(func.count()).where(t.leads.c.status == "enriched")
        ).scalar_one()
    assert waiting == 5  # nothing half-written
    admin.dispose()


def test_every_hop_declaration_names_a_suite_and_real_statuses():
    from tasks import order

    for hop in order.PIPELINE:
        assert hop.inputs and all(isinstance(s, Status) for s in hop.inputs)
        assert (Path(__file__).parents[1] / "suites" / f"{hop.suite}.yaml").exists()
