"""The hop runner under Prefect, on SQLite and PostgreSQL: a worker SIGKILLed mid-batch is
finished by the next run, a connection dropped mid-hop is retried and a lasting one named.
The claim queue itself is in store/test_queue.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pandas as pd
import pytest
from sqlalchemy import create_engine, func, select, text

from leadflow import lifecycle, store
from leadflow import runner as hops
from leadflow import tables as t
from tasks import hops as hop_tasks

from helpers import QUEUE_NOW as NOW
from helpers import admit, assert_ledger_ok, claimed, ingest, write

# --------------------------------------------------------------------------- runner, real kill

WORKER = textwrap.dedent(
    """
    import sys, time
    from dataclasses import replace
    from datetime import datetime, UTC
    from leadflow import runner as hops, store
    from leadflow.enrich import hop as enrich

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
    from leadflow.scoring import decide as scoring
    from leadflow.scoring import hop as score_hop

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
        return hop_tasks.drain(hop, context, database_url=database_url, now=NOW, publish=False)

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
