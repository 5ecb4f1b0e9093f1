"""The outbox: every message that leaves leadflow, written with the decision that caused it.

A hop that decides something people must hear about (a lead routed to a rep, an SLA breached,
a nurture touch due) calls ``enqueue`` inside its own transaction: the message exists if and
only if the decision does. Each message has an idempotency key (e.g. ``owner:<lead>:<rep>``);
enqueueing the same key again is a no-op, so a rerun of the hop never queues a second copy.

A sender (``leadflow/outbox/sender.py``) claims small batches with ``claim_due`` under a token and
a lease on the wall clock, then, for each message, ``renew``s its lease just before handing it
to the server, and records ``mark_failed`` / ``defer`` right after and ``mark_sent`` with the
next step (in the transaction that renews the next message), each conditional on the token. The guarantee, precisely:

- **Never two senders at once, by design.** A message is handed to a server only by the
  sender whose token it carries, and only after a renewal that gives it a full ``LEASE`` (far
  longer than a send can take: the clients' timeouts are seconds). A sender that was slow
  and whose lease ran out finds the token changed at its next renewal and skips the message.
- **At least once to the server, with a stable identity.** A sender that dies between the
  server's acceptance and ``mark_sent`` (SIGKILL inside SMTP DATA, the database gone after
  ``250``) leaves the message ``sending``; when the lease ends another sender sends it again,
  with the same ``Message-ID`` (derived from the idempotency key) or webhook
  ``Idempotency-Key`` header, so the receiver can tell it is the same message.

Failures: a permanent refusal (SMTP 5xx, a webhook 4xx) is ``dead`` at once with the reason.
A temporary one (SMTP 4xx, a webhook 5xx/429, a lost connection) is retried with jittered
exponential backoff until the kind's time ``BUDGET`` since the first failure is spent; an
unreachable server puts messages back untried (``defer``) under the same budget. ``dead``
messages wait for a person (``requeue_dead``; ``leadflow outbox requeue-dead``).

Order: urgent kinds first (owner notices and SLA escalations), then webhooks, then nurture
touches; oldest due first within a kind (``PRIORITY``).

Statuses: ``pending`` -> ``sending`` -> ``sent``; ``sending`` -> ``failed`` (due again at
``next_attempt_at``) -> ``sending`` ...; ``sending`` -> ``pending`` (deferred, untried);
``failed``/``pending`` -> ``dead`` when the budget is spent, or at once on a permanent error.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, and_, case, func, or_, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from leadflow import store
from leadflow import tables as t
from leadflow.quarantine import masked

KINDS = (
    "owner_notification",
    "sla_escalation",
    "nurture_touch",
    "webhook",
    "crm_sync",
    "booking_invite",  # the lead's first email: its booking link (leadflow/booking/)
    "meeting_invitation",  # a booked meeting's ICS REQUEST / CANCEL, to the lead and the rep
    "calendar_event",  # a booked meeting written to (or removed from) the rep's CalDAV calendar
)
# crm: a lead's record in a CRM (recipient: hubspot | salesforce), sent by leadflow/crm/sync.py;
# caldav: an event on a rep's calendar (recipient: the rep's code), sent by the outbox sender
CHANNELS = ("email", "webhook", "crm", "caldav")
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
# Claim order: what a person waits on goes first, always.
PRIORITY = {
    "owner_notification": 0,
    "sla_escalation": 0,
    "booking_invite": 0,
    "meeting_invitation": 0,
    "calendar_event": 0,
    "webhook": 1,
    "crm_sync": 1,
    "nurture_touch": 2,
}
URGENT = tuple(kind for kind, rank in PRIORITY.items() if rank == 0)
# How long temporary failures may go on before a message is given up (then: dead).
BUDGET = {
    "owner_notification": timedelta(hours=6),
    "sla_escalation": timedelta(hours=6),
    "webhook": timedelta(hours=24),
    "nurture_touch": timedelta(hours=24),
    "crm_sync": timedelta(hours=24),
    "booking_invite": timedelta(hours=6),
    "meeting_invitation": timedelta(hours=6),
    "calendar_event": timedelta(hours=24),
}
LEASE = timedelta(minutes=2)  # a sender's hold, renewed before each send (a send takes seconds)
BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(minutes=30)  # a recovered server is noticed within half an hour


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def retry_delay(failures: int, rng: random.Random | None = None) -> timedelta:
    """How long to wait after the ``failures``-th temporary failure in a row: 1, 2, 4, ...
    minutes capped at ``BACKOFF_CAP``, each drawn between half and all of that ("equal
    jitter"), so messages that failed together do not all come back in the same second."""
    ceiling = min(BACKOFF_BASE * (2 ** max(failures - 1, 0)), BACKOFF_CAP)
    return ceiling * (0.5 + 0.5 * (rng or random).random())


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


def new_token() -> str:
    return uuid.uuid4().hex


def _priority() -> Any:
    table = t.outbox
    return case(
        *[(table.c.kind == kind, rank) for kind, rank in PRIORITY.items()], else_=len(PRIORITY)
    )


def claim_due(
    engine: Engine,
    limit: int,
    now: datetime,
    *,
    token: str | None = None,
    kinds: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    lead_ids: Sequence[int] | None = None,
    recipients: Sequence[str] | None = None,
    lease: timedelta = LEASE,
    clock: datetime | None = None,
) -> pd.DataFrame:
    """Take up to ``limit`` messages due at ``now`` (pending or failed whose time has come,
    or sending whose lease ended by ``clock``, the wall clock), urgent kinds first and oldest
    due first, optionally only ``kinds`` on ``channels`` (and only about ``lead_ids``, only to
    ``recipients``); mark
    them ``sending`` under
    ``token`` until ``clock + lease``. Concurrent senders never get the same message (SKIP
    LOCKED on PostgreSQL; one writer on SQLite). Returns the claimed rows (all outbox columns)
    in claim order, with the token in ``claim_token``."""
    moment = _utc(now)
    wall = _utc(clock or datetime.now(UTC))
    token = token or new_token()
    table = t.outbox
    due = or_(
        and_(table.c.status.in_(("pending", "failed")), table.c.next_attempt_at <= moment),
        and_(
            table.c.status == "sending",
            or_(
                table.c.lease_until <= wall,
                # A claim from before leases were kept apart: its due time was its lease.
                and_(table.c.lease_until.is_(None), table.c.next_attempt_at <= moment),
            ),
        ),
    )
    query = select(table.c.id).where(due)
    if kinds is not None:
        query = query.where(table.c.kind.in_(list(kinds)))
    if channels is not None:
        query = query.where(table.c.channel.in_(list(channels)))
    if lead_ids is not None:
        query = query.where(table.c.lead_id.in_([int(i) for i in lead_ids]))
    if recipients is not None:
        query = query.where(table.c.recipient.in_(list(recipients)))
    # One kind asked for: its due order alone, which an index can give (a CRM sync's claims
    # over a large outbox); several: urgent kinds first.
    one_kind = kinds is not None and len(kinds) == 1
    order = (
        (table.c.next_attempt_at, table.c.id)
        if one_kind
        else (_priority(), table.c.next_attempt_at, table.c.id)
    )
    with engine.begin() as conn:
        query = query.order_by(*order).limit(limit)
        if store.is_postgres(conn):
            query = query.with_for_update(skip_locked=True)
        ids = [row[0] for row in conn.execute(query)]
        if not ids:
            return pd.DataFrame(columns=[c.key for c in table.c])
        conn.execute(
            update(table)
            .where(table.c.id.in_(ids))
            .values(status="sending", claim_token=token, lease_until=wall + lease)
        )
        rows = conn.execute(select(table).where(table.c.id.in_(ids)).order_by(*order)).all()
    return pd.DataFrame([dict(row._mapping) for row in rows], columns=[c.key for c in table.c])


def _held(ids: Sequence[int], token: str | None) -> Any:
    """Rows still ``sending`` under ``token`` (any token when None: tests, people)."""
    table = t.outbox
    clause = and_(table.c.id.in_(list(ids)), table.c.status == "sending")
    return clause if token is None else and_(clause, table.c.claim_token == token)


def renew(
    conn: Connection,
    message_id: int,
    token: str,
    *,
    clock: datetime | None = None,
    lease: timedelta = LEASE,
) -> bool:
    """Extend our hold on one message just before sending it: True if it is still ours (its
    lease may have run out, but nobody took it over), False if another sender has it now or
    it was settled: then it must not be sent."""
    wall = _utc(clock or datetime.now(UTC))
    return (
        conn.execute(
            update(t.outbox).where(_held([message_id], token)).values(lease_until=wall + lease)
        ).rowcount
        == 1
    )


def mark_sent(
    conn: Connection, ids: Iterable[int], sent_at: datetime, *, token: str | None = None
) -> int:
    """Record delivery of claimed messages at ``sent_at`` (the time the server took them);
    returns how many were still ours to mark."""
    ids = list(ids)
    if not ids:
        return 0
    table = t.outbox
    return conn.execute(
        update(table)
        .where(_held(ids, token))
        .values(
            status="sent",
            sent_at=_utc(sent_at),
            attempts=table.c.attempts + 1,
            last_error=None,
            claim_token=None,
            lease_until=None,
            failing_since=None,
        )
    ).rowcount


def _budget_spent(kind: str, failing_since: datetime, now: datetime) -> bool:
    return now - _utc(failing_since) >= BUDGET.get(kind, BUDGET["webhook"])


def mark_failed(
    conn: Connection,
    message_id: int,
    error: str,
    now: datetime,
    *,
    token: str | None = None,
    permanent: bool = False,
    rng: random.Random | None = None,
) -> str | None:
    """Record a failed attempt: ``dead`` at once when ``permanent`` or when the kind's budget
    since the first failure in a row is spent, else ``failed`` and due again after a jittered
    ``retry_delay``. ``error`` must already be free of personal data. Returns the status, or
    None when the message was no longer ours."""
    table = t.outbox
    moment = _utc(now)
    row = conn.execute(
        select(table.c.kind, table.c.attempts, table.c.failing_since).where(
            _held([message_id], token)
        )
    ).first()
    if row is None:
        return None
    attempts = row.attempts + 1
    since = _utc(row.failing_since) if row.failing_since is not None else moment
    dead = permanent or _budget_spent(row.kind, since, moment)
    status = "dead" if dead else "failed"
    conn.execute(
        update(table)
        .where(_held([message_id], token))
        .values(
            status=status,
            attempts=attempts,
            last_error=error[:2000],
            next_attempt_at=moment + retry_delay(attempts, rng),
            failing_since=since,
            claim_token=None,
            lease_until=None,
        )
    )
    return status


def defer(
    conn: Connection,
    ids: Iterable[int],
    error: str,
    now: datetime,
    *,
    token: str | None = None,
    delay: timedelta = BACKOFF_BASE,
) -> tuple[int, int]:
    """Give claimed messages back untried (the server is unreachable or its breaker is open,
    no notifier for the channel): ``pending`` again, due after ``delay``, attempts unchanged;
    those whose kind's budget is spent are ``dead``. Returns (deferred, dead)."""
    ids = list(ids)
    if not ids:
        return 0, 0
    table = t.outbox
    moment = _utc(now)
    held = conn.execute(
        select(table.c.id, table.c.kind, table.c.failing_since).where(_held(ids, token))
    ).all()
    spent = [
        row.id
        for row in held
        if row.failing_since is not None and _budget_spent(row.kind, row.failing_since, moment)
    ]
    common = {"last_error": error[:2000], "claim_token": None, "lease_until": None}
    died = 0
    if spent:
        died = conn.execute(
            update(table).where(_held(spent, token)).values(status="dead", **common)
        ).rowcount
    deferred = conn.execute(
        update(table)
        .where(_held([row.id for row in held if row.id not in set(spent)], token))
        .values(
            status="pending",
            next_attempt_at=moment + delay,
            failing_since=func.coalesce(table.c.failing_since, moment),
            **common,
        )
    ).rowcount
    return deferred, died


def counts(conn: Connection) -> dict[str, int]:
    """Messages per status (for summaries and the UI)."""
    table = t.outbox
    rows = conn.execute(select(table.c.status, func.count()).group_by(table.c.status)).all()
    return {status: int(n) for status, n in rows}


def backlog(conn: Connection, now: datetime) -> dict[str, int]:
    """What is left undelivered at ``now``: ``due`` (waiting to be sent now), ``waiting``
    (retrying or scheduled later), ``sending`` (held by a sender) and ``dead``."""
    table = t.outbox
    moment = _utc(now)
    open_ = table.c.status.in_(("pending", "failed"))
    row = conn.execute(
        select(
            func.count().filter(and_(open_, table.c.next_attempt_at <= moment)),
            func.count().filter(and_(open_, table.c.next_attempt_at > moment)),
            func.count().filter(table.c.status == "sending"),
            func.count().filter(table.c.status == "dead"),
        )
    ).one()
    return {"due": row[0], "waiting": row[1], "sending": row[2], "dead": row[3]}


def overview(conn: Connection, *, errors: int = 10) -> dict[str, Any]:
    """Counts by status and kind, and the commonest errors of undelivered messages (errors
    are stored masked)."""
    table = t.outbox
    by_kind = conn.execute(
        select(table.c.status, table.c.kind, func.count()).group_by(table.c.status, table.c.kind)
    ).all()
    error_rows = conn.execute(
        select(table.c.status, table.c.last_error, func.count().label("n"))
        .where(table.c.status != "sent", table.c.last_error.is_not(None))
        .group_by(table.c.status, table.c.last_error)
        .order_by(func.count().desc(), table.c.last_error)
        .limit(errors)
    ).all()
    return {
        "by_status": counts(conn),
        "by_status_kind": [
            {"status": status, "kind": kind, "messages": int(n)} for status, kind, n in by_kind
        ],
        "errors": [
            {"status": status, "error": masked(error), "messages": int(n)}
            for status, error, n in error_rows
        ],
    }


def messages(
    conn: Connection,
    *,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Messages for a person to look at, newest first, recipients and errors masked."""
    table = t.outbox
    query = select(
        table.c.id,
        table.c.kind,
        table.c.channel,
        table.c.recipient,
        table.c.lead_id,
        table.c.status,
        table.c.attempts,
        table.c.next_attempt_at,
        table.c.failing_since,
        table.c.sent_at,
        table.c.last_error,
    ).order_by(table.c.id.desc())
    if status:
        query = query.where(table.c.status == status)
    if kind:
        query = query.where(table.c.kind == kind)
    out = []
    for row in conn.execute(query.limit(limit)):
        item = dict(row._mapping)
        item["recipient"] = masked(item["recipient"])
        item["last_error"] = masked(item["last_error"]) if item["last_error"] else ""
        out.append({k: ("" if v is None else v) for k, v in item.items()})
    return out


def _selected(statement: Any, ids: Iterable[int] | None, kinds: Sequence[str] | None) -> Any:
    table = t.outbox
    if ids is not None:
        statement = statement.where(table.c.id.in_(list(ids)))
    if kinds:
        statement = statement.where(table.c.kind.in_(list(kinds)))
    return statement


def requeue_dead(
    conn: Connection,
    now: datetime,
    ids: Iterable[int] | None = None,
    kinds: Sequence[str] | None = None,
) -> int:
    """Give dead messages (all, or ``ids``/``kinds``) a fresh budget, due at ``now``."""
    table = t.outbox
    statement = _selected(update(table).where(table.c.status == "dead"), ids, kinds)
    return conn.execute(
        statement.values(
            status="pending", attempts=0, failing_since=None, next_attempt_at=_utc(now)
        )
    ).rowcount


def retry_now(
    conn: Connection,
    now: datetime,
    ids: Iterable[int] | None = None,
    kinds: Sequence[str] | None = None,
) -> int:
    """Make messages waiting out a backoff (failed, or put back untried) due at ``now``:
    after the server is fixed, nobody should wait half an hour."""
    table = t.outbox
    waiting = or_(
        table.c.status == "failed",
        and_(table.c.status == "pending", table.c.failing_since.is_not(None)),
    )
    statement = _selected(
        update(table).where(waiting, table.c.next_attempt_at > _utc(now)), ids, kinds
    )
    return conn.execute(statement.values(next_attempt_at=_utc(now))).rowcount
