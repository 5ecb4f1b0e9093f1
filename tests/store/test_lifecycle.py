"""The status machine's ledger, on SQLite and PostgreSQL (the machine itself is in
unit/lifecycle/test_status_machine.py)."""

from datetime import UTC, datetime

import pandas as pd
import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError

from leadflow import lifecycle, queue, store
from leadflow import tables as t
from leadflow.lifecycle import IllegalTransition, StaleTransition

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def admit(engine, n=3):
    with engine.begin() as conn:
        ids = store.allocate_ids(conn, t.leads, n)
        rows = pd.DataFrame(
            {
                "id": ids,
                "email": [f"u{i}@x.com" for i in ids],
                "captured_at": pd.Timestamp(NOW),
                "last_seen_at": pd.Timestamp(NOW),
                "updated_at": pd.Timestamp(NOW),
            }
        )
        lifecycle.admit(conn, rows, actor="test", at=NOW)
    return [int(i) for i in ids]


def statuses(engine):
    with engine.connect() as conn:
        return dict(conn.execute(select(t.leads.c.id, t.leads.c.status)).all())


def test_admit_and_transition_write_one_ledger_row_each(engine):
    ids = admit(engine)
    changes = pd.DataFrame(
        {
            "id": ids,
            "from_status": "captured",
            "to_status": ["enriched", "enriched", "disqualified"],
            "reason": ["enriched", "enriched", "competitor"],
        }
    )
    with engine.begin() as conn:
        moved = lifecycle.apply(conn, changes, actor="test", at=NOW, flow_run_id="run-1")
    assert moved == 3
    assert statuses(engine) == {ids[0]: "enriched", ids[1]: "enriched", ids[2]: "disqualified"}
    with engine.connect() as conn:
        events = store.read_frame(conn, select(t.lead_events).order_by(t.lead_events.c.id))
    assert len(events) == 6
    assert events["to_status"].tolist()[:3] == ["captured"] * 3
    last = events.iloc[5]
    assert (last.from_status, last.to_status, last.reason, last.flow_run_id) == (
        "captured",
        "disqualified",
        "competitor",
        "run-1",
    )


def test_illegal_transition_writes_nothing(engine):
    ids = admit(engine)
    changes = pd.DataFrame(
        {"id": ids, "from_status": "captured", "to_status": ["enriched", "won", "enriched"]}
    )
    with pytest.raises(IllegalTransition), engine.begin() as conn:
        lifecycle.apply(conn, changes, actor="test", at=NOW)
    assert set(statuses(engine).values()) == {"captured"}


def test_stale_status_rolls_back_the_whole_batch(engine):
    ids = admit(engine)
    changes = pd.DataFrame(
        {
            "id": ids,
            "from_status": ["captured", "captured", "enriched"],
            "to_status": "disqualified",
        }
    )
    with pytest.raises(StaleTransition, match="1 of 3 leads"), engine.begin() as conn:
        lifecycle.apply(conn, changes, actor="test", at=NOW)
    assert set(statuses(engine).values()) == {"captured"}
    with engine.connect() as conn:
        assert conn.execute(select(t.lead_events.c.id)).all().__len__() == 3


def test_field_only_changes_write_no_event(engine):
    ids = admit(engine, 1)
    changes = pd.DataFrame(
        {"id": ids, "from_status": "captured", "to_status": "captured", "title": ["CEO"]}
    )
    with engine.begin() as conn:
        assert lifecycle.apply(conn, changes, actor="test", at=NOW) == 0
        assert conn.execute(select(t.leads.c.title)).scalar_one() == "CEO"
        assert len(conn.execute(select(t.lead_events.c.id)).all()) == 1


def test_claims_guard_transitions(engine):
    ids = admit(engine, 2)

    def lease(size: int) -> tuple[str, int]:
        request = queue.Request("test", ("captured",), size, queue.Strategy.LEASE)
        token, count, _ = queue.take_lease(engine, request)
        return token, count

    token, count = lease(1)
    assert count == 1
    assert lease(5)[1] == 1  # the other one
    with engine.connect() as conn:
        mine = (
            conn.execute(select(t.leads.c.id).where(t.leads.c.claimed_by == token)).scalars().all()
        )
    changes = pd.DataFrame({"id": ids, "from_status": "captured", "to_status": "enriched"})
    with pytest.raises(StaleTransition, match="no longer claimed"), engine.begin() as conn:
        lifecycle.apply(conn, changes, actor="test", at=NOW, claimed_by=token)
    with engine.begin() as conn:
        lifecycle.apply(
            conn, changes[changes["id"].isin(mine)], actor="test", at=NOW, claimed_by=token
        )
        assert queue.release_in(conn, token) == 1


def test_ledger_is_append_only_in_the_database(engine):
    admit(engine, 1)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(update(t.lead_events).values(reason="edited"))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(delete(t.lead_events))
