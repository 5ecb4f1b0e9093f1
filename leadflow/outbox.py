"""The outbox: every message that leaves leadflow, written with the decision that caused it.

A hop that decides something people must hear about (a lead routed to a rep, an SLA breached,
a nurture touch due) calls ``enqueue`` inside its own transaction: the message exists if and
only if the decision does. Each message has an idempotency key (e.g. ``owner:<lead>:<rep>``);
enqueueing the same key again is a no-op, so a rerun of the hop never queues a second copy.

A separate sender (``tasks/notify.py``) calls ``claim_due``, delivers, and reports back with
``mark_sent`` or ``mark_failed``. Delivery is at least once per claim and, through the key
and the statuses, once in practice: a claimed message is ``sending`` under a short lease, so
a sender that crashed mid-batch leaves messages that another sender takes over when the lease
ends (the only case where a message can go out twice: sent, then crashed before
``mark_sent``). A failure is retried with exponential backoff; after ``max_attempts`` the
message is ``dead`` and waits for a person.

Statuses: ``pending`` -> ``sending`` -> ``sent``; ``sending`` -> ``failed`` (due again at
``next_attempt_at``) -> ``sending`` ...; ``failed`` -> ``dead`` after the last attempt.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pandas as pd
from sqlalchemy import Connection, Engine, and_, func, or_, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from leadflow import store
from leadflow import tables as t

KINDS = ("owner_notification", "sla_escalation", "nurture_touch", "webhook")
CHANNELS = ("email", "webhook")
# Columns ``enqueue`` takes; the first four are required.
MESSAGE_COLUMNS = (
    "idempotency_key",
    "kind",
    "channel",
    "recipient",
    "lead_id",
    "subject",
    "body",
    "payload",  # dict (webhook body, template variables)
    "attachments",  # list of {filename, content_type, content}
    "next_attempt_at",  # default: now (send at once); later for scheduled touches
)
LEASE = timedelta(minutes=2)  # a sender sends one batch well within this
BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=6)
MAX_ATTEMPTS = 8  # 1+2+4+...+64 min ≈ 2 hours of retries before a person looks


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def retry_delay(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed attempt: 1, 2, 4, ... minutes, capped."""
    return min(BACKOFF_BASE * (2 ** max(attempts - 1, 0)), BACKOFF_CAP)


def enqueue(
    conn: Connection,
    frame: pd.DataFrame,
    *,
    now: datetime,
    flow_run_id: str | None = None,
) -> int:
    """Queue the messages of ``frame`` (``MESSAGE_COLUMNS``) in the caller's transaction, in
    bulk; a message whose idempotency key is already queued (or sent) is skipped. Returns how
    many were new."""
    if frame.empty:
        return 0
    missing = [c for c in MESSAGE_COLUMNS[:4] if c not in frame.columns]
    if missing:
        raise ValueError(f"outbox messages need columns {missing}")
    unknown = sorted(set(frame["kind"]) - set(KINDS)) + sorted(
        set(frame["channel"]) - set(CHANNELS)
    )
    if unknown:
        raise ValueError(
            f"unknown outbox kind/channel {unknown}; kinds {KINDS}, channels {CHANNELS}"
        )
    rows = frame[[c for c in MESSAGE_COLUMNS if c in frame.columns]].copy()
    # The same key twice in one frame: keep the first (the stage has no unique index).
    rows = rows.drop_duplicates("idempotency_key")
    moment = pd.Timestamp(_utc(now))
    if "next_attempt_at" not in rows.columns:
        rows["next_attempt_at"] = moment
    rows["next_attempt_at"] = pd.to_datetime(rows["next_attempt_at"], utc=True).fillna(moment)
    rows["status"] = "pending"
    rows["attempts"] = 0
    rows["created_at"] = moment
    rows["flow_run_id"] = flow_run_id
    table = t.outbox
    columns = list(rows.columns)
    if store.is_postgres(conn) and _copy_if_all_new(conn, rows):
        return len(rows)
    with store.staged(conn, table, rows) as stage:
        # WHERE true: SQLite needs it to parse INSERT ... SELECT ... ON CONFLICT.
        source = select(*[stage.c[c] for c in columns]).where(true())
        dialect_insert = pg_insert if store.is_postgres(conn) else sqlite_insert
        statement = (
            dialect_insert(table)
            .from_select(columns, source)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )
        return conn.execute(statement).rowcount


def _copy_if_all_new(conn: Connection, rows: pd.DataFrame) -> bool:
    """COPY straight into the outbox under a savepoint; False (nothing written) if a key was
    already there. The common case, all keys new, then costs one COPY instead of a COPY into
    a stage plus an INSERT ... SELECT (100k owner messages: about half the time)."""
    savepoint = conn.begin_nested()
    try:
        store.bulk_insert(conn, t.outbox, rows)
    except Exception as exc:
        savepoint.rollback()
        if getattr(exc, "pgcode", None) == "23505":  # unique_violation: take the slow path
            return False
        raise
    savepoint.commit()
    return True


def claim_due(
    engine: Engine, limit: int, now: datetime, *, lease: timedelta = LEASE
) -> pd.DataFrame:
    """Take up to ``limit`` messages due at ``now`` (pending or failed whose time has come, or
    sending whose lease ran out), oldest due first, and mark them ``sending`` until
    ``now + lease``. Concurrent senders never get the same message (SKIP LOCKED on
    PostgreSQL; one writer on SQLite). Returns the claimed rows (all outbox columns)."""
    moment = _utc(now)
    table = t.outbox
    due = or_(
        and_(table.c.status.in_(("pending", "failed")), table.c.next_attempt_at <= moment),
        and_(table.c.status == "sending", table.c.next_attempt_at <= moment),
    )
    with engine.begin() as conn:
        query = (
            select(table.c.id).where(due).order_by(table.c.next_attempt_at, table.c.id).limit(limit)
        )
        if store.is_postgres(conn):
            query = query.with_for_update(skip_locked=True)
        ids = [row[0] for row in conn.execute(query)]
        if not ids:
            return pd.DataFrame(columns=[c.key for c in table.c])
        conn.execute(
            update(table)
            .where(table.c.id.in_(ids))
            .values(status="sending", next_attempt_at=moment + lease)
        )
        rows = conn.execute(select(table).where(table.c.id.in_(ids)).order_by(table.c.id)).all()
    return pd.DataFrame([dict(row._mapping) for row in rows], columns=[c.key for c in table.c])


def mark_sent(conn: Connection, ids: Iterable[int], now: datetime) -> int:
    """Record delivery of claimed messages; returns how many were still ours to mark."""
    ids = list(ids)
    if not ids:
        return 0
    table = t.outbox
    return conn.execute(
        update(table)
        .where(table.c.id.in_(ids), table.c.status == "sending")
        .values(
            status="sent",
            sent_at=_utc(now),
            attempts=table.c.attempts + 1,
            last_error=None,
        )
    ).rowcount


def mark_failed(
    conn: Connection,
    message_id: int,
    error: str,
    now: datetime,
    *,
    max_attempts: int = MAX_ATTEMPTS,
) -> str:
    """Record a failed attempt: ``failed`` and due again after ``retry_delay``, or ``dead``
    at the last attempt. ``error`` must already be free of personal data. Returns the status."""
    table = t.outbox
    attempts = (
        conn.execute(select(table.c.attempts).where(table.c.id == message_id)).scalar_one() + 1
    )
    status = "dead" if attempts >= max_attempts else "failed"
    conn.execute(
        update(table)
        .where(table.c.id == message_id)
        .values(
            status=status,
            attempts=attempts,
            last_error=error[:2000],
            next_attempt_at=_utc(now) + retry_delay(attempts),
        )
    )
    return status


def defer(conn: Connection, ids: Iterable[int], error: str, now: datetime) -> int:
    """Give claimed messages back untried (the server was unreachable, no notifier for the
    channel): ``pending`` again, due after ``BACKOFF_BASE``, attempts unchanged."""
    ids = list(ids)
    if not ids:
        return 0
    table = t.outbox
    return conn.execute(
        update(table)
        .where(table.c.id.in_(ids), table.c.status == "sending")
        .values(status="pending", last_error=error[:2000], next_attempt_at=_utc(now) + BACKOFF_BASE)
    ).rowcount


def counts(conn: Connection) -> dict[str, int]:
    """Messages per status (for summaries and the UI)."""
    table = t.outbox
    rows = conn.execute(select(table.c.status, func.count()).group_by(table.c.status)).all()
    return {status: int(n) for status, n in rows}


def requeue_dead(conn: Connection, now: datetime, ids: Iterable[int] | None = None) -> int:
    """Give dead messages (all, or ``ids``) a fresh set of attempts, due at ``now``."""
    table = t.outbox
    statement = update(table).where(table.c.status == "dead")
    if ids is not None:
        statement = statement.where(table.c.id.in_(list(ids)))
    return conn.execute(
        statement.values(
            status="pending",
            attempts=0,
            next_attempt_at=_utc(now),
        )
    ).rowcount
