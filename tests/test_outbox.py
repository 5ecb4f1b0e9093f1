"""The outbox on SQLite and PostgreSQL: idempotent enqueue, due claims with leases, backoff."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import select

from leadflow import outbox
from leadflow import tables as t

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def messages(keys: list[str], **extra) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "idempotency_key": keys,
            "kind": "owner_notification",
            "channel": "email",
            "recipient": [f"rep{i}@example.com" for i in range(len(keys))],
            "lead_id": list(range(1, len(keys) + 1)),
            "subject": "New lead",
            "body": "hello",
            "payload": [{"lead": i} for i in range(len(keys))],
            "attachments": [[{"filename": "a.ics", "content": "x"}] for _ in keys],
            **extra,
        }
    )


def statuses(engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(t.outbox.c.idempotency_key, t.outbox.c.status)).all()
    return dict(rows)


def test_enqueue_is_idempotent_and_transactional(engine) -> None:
    with engine.begin() as conn:
        assert outbox.enqueue(conn, messages(["a", "b", "b"]), now=NOW) == 2
    with engine.begin() as conn:
        assert outbox.enqueue(conn, messages(["b", "c"]), now=NOW) == 1
    with pytest.raises(RuntimeError), engine.begin() as conn:
        outbox.enqueue(conn, messages(["d"]), now=NOW)
        raise RuntimeError("the decision failed: its message must go too")
    assert statuses(engine) == {"a": "pending", "b": "pending", "c": "pending"}
    with engine.connect() as conn:
        row = conn.execute(select(t.outbox).where(t.outbox.c.idempotency_key == "a")).one()
    assert row.payload == {"lead": 0} and row.attachments[0]["filename"] == "a.ics"


def test_claim_due_leases_and_backoff_to_dead(engine) -> None:
    later = messages(["later"], next_attempt_at=[NOW + timedelta(hours=1)])
    with engine.begin() as conn:
        outbox.enqueue(conn, pd.concat([messages(["a", "b"]), later]), now=NOW)
    claimed = outbox.claim_due(engine, 10, NOW)
    assert sorted(claimed["idempotency_key"]) == ["a", "b"]
    assert outbox.claim_due(engine, 10, NOW).empty  # leased: nobody else takes them
    with engine.begin() as conn:
        ids = dict(zip(claimed["idempotency_key"], claimed["id"], strict=True))
        assert outbox.mark_sent(conn, [ids["a"]], NOW) == 1
        assert outbox.mark_failed(conn, ids["b"], "421 try later", NOW, max_attempts=3) == "failed"
    # Backoff: due again after one minute, not before.
    assert outbox.claim_due(engine, 10, NOW + timedelta(seconds=59)).empty
    again = outbox.claim_due(engine, 10, NOW + timedelta(minutes=1))
    assert again["idempotency_key"].tolist() == ["b"]
    with engine.begin() as conn:
        assert outbox.mark_failed(conn, ids["b"], "x", NOW, max_attempts=3) == "failed"
    third = outbox.claim_due(engine, 10, NOW + timedelta(minutes=3))
    with engine.begin() as conn:
        assert (
            outbox.mark_failed(conn, int(third["id"].iloc[0]), "x", NOW, max_attempts=3) == "dead"
        )
    assert statuses(engine) == {"a": "sent", "b": "dead", "later": "pending"}
    assert outbox.claim_due(engine, 10, NOW + timedelta(days=1))["idempotency_key"].tolist() == [
        "later"
    ]
    with engine.begin() as conn:
        assert outbox.mark_sent(conn, [ids["a"]], NOW) == 0  # already sent: not ours to mark
        assert outbox.counts(conn) == {"sent": 1, "dead": 1, "sending": 1}


def test_a_crashed_senders_messages_are_taken_over_after_the_lease(engine) -> None:
    with engine.begin() as conn:
        outbox.enqueue(conn, messages(["a"]), now=NOW)
    assert len(outbox.claim_due(engine, 10, NOW)) == 1  # ...and the sender dies
    assert outbox.claim_due(engine, 10, NOW + outbox.LEASE - timedelta(seconds=1)).empty
    assert len(outbox.claim_due(engine, 10, NOW + outbox.LEASE)) == 1


def test_concurrent_claimers_never_share_a_message(engine) -> None:
    with engine.begin() as conn:
        outbox.enqueue(conn, messages([f"m{i}" for i in range(200)]), now=NOW)
    got: list[list[int]] = []

    def claimer() -> None:
        mine: list[int] = []
        while not (batch := outbox.claim_due(engine, 7, NOW)).empty:
            mine += batch["id"].tolist()
        got.append(mine)

    threads = [threading.Thread(target=claimer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for mine in got for i in mine]
    assert len(every) == 200 and len(set(every)) == 200


def test_retry_delay_is_exponential_and_capped() -> None:
    assert [outbox.retry_delay(n).total_seconds() / 60 for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert outbox.retry_delay(30) == outbox.BACKOFF_CAP


def test_bulk_enqueue_of_many_is_fast(engine) -> None:
    many = messages([f"k{i}" for i in range(20_000)])
    with engine.begin() as conn:
        assert outbox.enqueue(conn, many, now=NOW) == 20_000
    with engine.begin() as conn:
        assert outbox.enqueue(conn, many, now=NOW) == 0
