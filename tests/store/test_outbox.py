"""The outbox on SQLite and PostgreSQL: idempotent enqueue, due claims with leases, backoff."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import select

from leadflow import tables as t
from leadflow.outbox import store as outbox

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


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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


def test_claim_due_leases_backs_off_within_the_budget_then_dead(engine) -> None:
    later = messages(["later"], next_attempt_at=[NOW + timedelta(days=2)])
    with engine.begin() as conn:
        outbox.enqueue(conn, pd.concat([messages(["a", "b"]), later]), now=NOW)
    claimed = outbox.claim_due(engine, 10, NOW, token="s1")
    assert sorted(claimed["idempotency_key"]) == ["a", "b"]
    assert set(claimed["claim_token"]) == {"s1"}
    assert outbox.claim_due(engine, 10, NOW).empty  # leased: nobody else takes them
    rng = random.Random(1)
    with engine.begin() as conn:
        ids = dict(zip(claimed["idempotency_key"], claimed["id"], strict=True))
        assert outbox.mark_sent(conn, [ids["a"]], NOW, token="other") == 0  # not its claim
        assert outbox.mark_sent(conn, [ids["a"]], NOW, token="s1") == 1
        assert outbox.mark_failed(conn, ids["b"], "421 try later", NOW, token="s1", rng=rng) == (
            "failed"
        )
        row = conn.execute(select(t.outbox).where(t.outbox.c.id == ids["b"])).one()
    # Backoff with jitter: due again between 30 s and one minute, not before.
    due = _aware(row.next_attempt_at)
    assert NOW + timedelta(seconds=30) <= due <= NOW + timedelta(minutes=1)
    assert _aware(row.failing_since) == NOW and row.claim_token is None
    assert outbox.claim_due(engine, 10, due - timedelta(seconds=1)).empty
    # Temporary failures go on for the kind's budget (owner notices: hours), not a count.
    moment = due
    for _ in range(40):
        again = outbox.claim_due(engine, 10, moment, token="s2")
        assert again["idempotency_key"].tolist() == ["b"]
        with engine.begin() as conn:
            status = outbox.mark_failed(conn, ids["b"], "451 later", moment, token="s2", rng=rng)
            nxt = conn.execute(select(t.outbox.c.next_attempt_at).where(t.outbox.c.id == ids["b"]))
            moment = _aware(nxt.scalar_one())
        assert status == "failed"
        if moment - NOW >= outbox.BUDGET["owner_notification"]:
            break
    assert moment - NOW < outbox.BUDGET["owner_notification"] + outbox.BACKOFF_CAP
    last = outbox.claim_due(engine, 10, moment, token="s3")
    with engine.begin() as conn:
        assert outbox.mark_failed(conn, int(last["id"].iloc[0]), "451", moment, token="s3") == (
            "dead"
        )
    assert statuses(engine) == {"a": "sent", "b": "dead", "later": "pending"}
    assert outbox.claim_due(engine, 10, NOW + timedelta(days=3))["idempotency_key"].tolist() == [
        "later"
    ]
    with engine.begin() as conn:
        assert outbox.mark_sent(conn, [ids["a"]], NOW) == 0  # already sent: not ours to mark
        assert outbox.counts(conn) == {"sent": 1, "dead": 1, "sending": 1}
        # A person gives the dead one a fresh budget.
        assert outbox.requeue_dead(conn, NOW + timedelta(days=1)) == 1
        row = conn.execute(select(t.outbox).where(t.outbox.c.id == ids["b"])).one()
    assert (row.status, row.attempts, row.failing_since) == ("pending", 0, None)


def test_a_permanent_error_is_dead_at_once(engine) -> None:
    with engine.begin() as conn:
        outbox.enqueue(conn, messages(["a"]), now=NOW)
    claimed = outbox.claim_due(engine, 10, NOW, token="s")
    with engine.begin() as conn:
        status = outbox.mark_failed(
            conn, int(claimed["id"][0]), "550 no such user", NOW, token="s", permanent=True
        )
    assert status == "dead" and statuses(engine) == {"a": "dead"}


def test_a_crashed_senders_messages_are_taken_over_after_the_lease_on_the_wall_clock(
    engine,
) -> None:
    with engine.begin() as conn:
        outbox.enqueue(conn, messages(["a"]), now=NOW)
    wall = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    assert len(outbox.claim_due(engine, 10, NOW, token="dead", clock=wall)) == 1  # it dies
    assert outbox.claim_due(engine, 10, NOW, clock=wall + outbox.LEASE - timedelta(seconds=1)).empty
    # A sender whose `now` is hours ahead (or behind) does not see the lease as expired:
    # leases are on the wall clock.
    assert outbox.claim_due(engine, 10, NOW + timedelta(hours=2), clock=wall).empty
    taken = outbox.claim_due(engine, 10, NOW, token="new", clock=wall + outbox.LEASE)
    assert len(taken) == 1
    with engine.begin() as conn:
        # The dead sender's token no longer holds it: it can neither renew nor mark it.
        assert not outbox.renew(conn, int(taken["id"][0]), "dead", clock=wall)
        assert outbox.mark_sent(conn, taken["id"].tolist(), NOW, token="dead") == 0
        assert outbox.renew(conn, int(taken["id"][0]), "new", clock=wall + outbox.LEASE)


def test_claims_put_owner_notices_and_escalations_before_nurture_touches(engine) -> None:
    touches = messages([f"t{i}" for i in range(5)], kind="nurture_touch")
    touches["next_attempt_at"] = NOW - timedelta(hours=1)  # due long before the others
    urgent = pd.concat(
        [messages(["o1", "o2"]), messages(["e1"], kind="sla_escalation")], ignore_index=True
    )
    with engine.begin() as conn:
        outbox.enqueue(conn, touches, now=NOW)
        outbox.enqueue(conn, urgent, now=NOW)
    first = outbox.claim_due(engine, 3, NOW)
    assert sorted(first["idempotency_key"]) == ["e1", "o1", "o2"]
    assert outbox.claim_due(engine, 10, NOW, kinds=["sla_escalation"]).empty
    assert len(outbox.claim_due(engine, 10, NOW, channels=["webhook"])) == 0
    assert len(outbox.claim_due(engine, 10, NOW)) == 5


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


def test_bulk_enqueue_of_many_is_fast(engine) -> None:
    many = messages([f"k{i}" for i in range(20_000)])
    with engine.begin() as conn:
        assert outbox.enqueue(conn, many, now=NOW) == 20_000
    with engine.begin() as conn:
        assert outbox.enqueue(conn, many, now=NOW) == 0
