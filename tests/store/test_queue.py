"""The claim queue on SQLite and PostgreSQL: dead and live leases, concurrent claimants,
disjoint id ranges, serial claims. A killed worker and a dropped connection are in
flows/test_queue_flows.py."""

from __future__ import annotations

import threading
import time

import pytest

from leadflow import queue, store
from leadflow.lifecycle import Status

from helpers import admit, claimed

CAPTURED = (Status.CAPTURED.value,)


def lease(engine, size: int) -> tuple[str, int, int]:
    return queue.take_lease(engine, queue.Request("enrich", CAPTURED, size, queue.Strategy.LEASE))


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
