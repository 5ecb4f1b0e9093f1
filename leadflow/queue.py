"""The claim queue: how a hop takes a bounded batch of leads so that two workers never work
the same lead, and a batch left behind by a dead process is taken over within a minute.

The store is the queue: a lead waits in its hop's input statuses until a hop run claims it.
Every strategy below hands the runner the same thing, a ``Batch`` (ids, a connection to read
through and a transaction to write in), and every strategy is safe with two workers on
PostgreSQL, one writer on SQLite, and a process killed at any instruction:

- ``LEASE``: lease rows. The leads carry the claim's token; the ``claims`` row carries the
  expiry, renewed by a heartbeat while the batch works (one row, not 100k). Why: the hop does
  network I/O (firmographics) that must not sit inside an open transaction. A dead process
  stops renewing; the next claimant of the same hop takes its leads over after the TTL.
- ``ID_RANGE``: a range of ids held with a transaction-scoped advisory lock, claimed and
  written in one transaction. Why: for a pure hop nothing needs to outlive the transaction,
  and locking each row costs a row write: ``FOR UPDATE SKIP LOCKED`` took 24.9 s of a 1M
  scoring run, ranges 2.8 s. A killed process's lock dies with its connection.
- ``LOCKED_IDS``: given candidate ids (sparse: leads with new engagement, a rescore page), the
  ones still in the input statuses are locked ``FOR UPDATE SKIP LOCKED`` inside the write
  transaction. Why: the candidates are not id ranges, and these rows are rewritten anyway.
- ``SERIAL``: one claimant at a time per hop (a blocking transaction-scoped advisory lock),
  oldest leads first. Why: routing shares state across leads (round-robin counters, rep
  capacity); two routers must take turns or they would both hand a rep their last free slot.

On SQLite every write transaction begins IMMEDIATE, so there is one writer and the locks
above reduce to that.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, and_, delete, exists, func, insert, select, text, update

from leadflow import store
from leadflow import tables as t
from leadflow.settings import get_settings

log = logging.getLogger(__name__)


class Strategy(StrEnum):
    LEASE = "lease"
    ID_RANGE = "id_range"
    LOCKED_IDS = "locked_ids"
    SERIAL = "serial"


@dataclass(frozen=True)
class Request:
    """What a hop asks the queue for: up to ``size`` leads in ``statuses``.

    ``after``: only ids above it (a run's cursor, so leads a batch left in place are not taken
    again by the same run). ``ids``: the candidates, for ``LOCKED_IDS``. ``where``: an extra
    SQLAlchemy condition on ``leads``.
    """

    hop: str
    statuses: tuple[str, ...]
    size: int
    strategy: Strategy
    after: int = 0
    ids: Sequence[int] | None = None
    where: Any = None
    flow_run_id: str | None = None


@dataclass
class Batch:
    """A claimed batch. Read through ``reading()``, write through ``writing()``; for the
    transactional strategies both are the claim's own transaction."""

    hop: str
    ids: list[int]
    strategy: Strategy
    next_after: int  # where the run's next claim starts
    token: str | None = None  # the lease token on the leads (LEASE only)
    taken_over: int = 0  # leads taken from claims whose holder died
    _engine: Engine | None = field(default=None, repr=False)
    _conn: Connection | None = field(default=None, repr=False)

    @property
    def guard(self) -> str | None:
        """What ``lifecycle.apply`` must find in ``claimed_by`` for a write to count."""
        return self.token

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
            return
        assert self._engine is not None
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
            return
        assert self._engine is not None
        with self._engine.begin() as conn:
            yield conn

    def read(self, conn: Connection, columns: Sequence[Any]) -> pd.DataFrame:
        """The batch's leads, in id order (columns by name or as SQLAlchemy expressions)."""
        leads = t.leads
        selected = [leads.c[c] if isinstance(c, str) else c for c in columns]
        if self.token is not None:
            statement = select(*selected).where(leads.c.claimed_by == self.token)
            return store.read_frame_fast(conn, statement.order_by(leads.c.id))
        return store.read_frame_by_ids(conn, selected, leads.c.id, self.ids, order_by=leads.c.id)


# --------------------------------------------------------------------------- entry point


@contextmanager
def claim(engine: Engine, request: Request) -> Iterator[Batch | None]:
    """Claim a batch for ``request``; yields None when nothing is waiting.

    The claim is given back when the block ends, whether the batch was written or not.
    """
    if request.strategy is Strategy.LEASE:
        with _lease(engine, request) as batch:
            yield batch
        return
    with engine.begin() as conn:
        if request.strategy is Strategy.ID_RANGE:
            ids, following = _next_range(conn, request)
        elif request.strategy is Strategy.LOCKED_IDS:
            ids, following = _lock_ids(conn, request)
        else:
            ids, following = _serial(conn, request)
        yield Batch(request.hop, ids, request.strategy, following, _conn=conn) if ids else None


# --------------------------------------------------------------------------- lease


def new_token(hop: str) -> str:
    return f"{hop}:{uuid.uuid4().hex}"


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _ttl() -> int:
    return get_settings().claim_ttl_seconds


def _dead_claims(now: datetime) -> Any:
    """Leads whose claim is gone or expired: their holder stopped renewing (it died)."""
    claims, leads = t.claims, t.leads
    live = exists().where(claims.c.token == leads.c.claimed_by, claims.c.expires_at >= now)
    return and_(leads.c.claimed_by.is_not(None), ~live)


def take_over(conn: Connection, statuses: Sequence[str], now: datetime) -> int:
    """Free leads in ``statuses`` held by dead claims; returns how many."""
    leads = t.leads
    freed = conn.execute(
        update(leads)
        .where(_dead_claims(now), leads.c.status.in_(list(statuses)))
        .values(claimed_by=None, claim_expires_at=None)
    ).rowcount
    _forget_empty_claims(conn, now)
    return freed


def _forget_empty_claims(conn: Connection, now: datetime) -> None:
    claims, leads = t.claims, t.leads
    holds = exists().where(leads.c.claimed_by == claims.c.token)
    conn.execute(delete(claims).where(claims.c.expires_at < now, ~holds))


def take_lease(engine: Engine, request: Request, token: str | None = None) -> tuple[str, int, int]:
    """Lease up to ``request.size`` free leads: returns (token, leads leased, leads taken over
    from dead claims first). Nothing leased leaves no claim row behind."""
    token = token or new_token(request.hop)
    ttl = _ttl()
    leads, claims = t.leads, t.claims
    with engine.begin() as conn:
        now = store.utcnow()
        taken = take_over(conn, request.statuses, now)
        conn.execute(
            insert(claims).values(
                token=token,
                hop=request.hop,
                holder=_holder(),
                flow_run_id=request.flow_run_id,
                claimed_at=now,
                renewed_at=now,
                expires_at=now + timedelta(seconds=ttl),
                leads=0,
            )
        )
        candidates = (
            select(leads.c.id)
            .where(leads.c.status.in_(list(request.statuses)), leads.c.claimed_by.is_(None))
            .where(leads.c.id > request.after)
            .order_by(leads.c.id)
            .limit(request.size)
        )
        if request.where is not None:
            candidates = candidates.where(request.where)
        if store.is_postgres(conn):
            candidates = candidates.with_for_update(skip_locked=True)
        count = conn.execute(
            update(leads)
            .where(leads.c.id.in_(candidates.scalar_subquery()))
            .values(claimed_by=token)
        ).rowcount
        if count:
            conn.execute(update(claims).where(claims.c.token == token).values(leads=count))
        else:
            conn.execute(delete(claims).where(claims.c.token == token))
    if taken:
        log.warning(
            "%s: took over %d leads left claimed by a run that stopped renewing its lease",
            request.hop,
            taken,
        )
    return token, count, taken


@contextmanager
def _lease(engine: Engine, request: Request) -> Iterator[Batch | None]:
    token, count, taken = take_lease(engine, request)
    if not count:
        yield None
        return
    heartbeat = _Heartbeat(engine, token, _ttl())
    heartbeat.start()
    try:
        leads = t.leads
        with engine.connect() as conn:
            high = conn.execute(
                select(func.max(leads.c.id)).where(leads.c.claimed_by == token)
            ).scalar_one()
        yield Batch(
            request.hop,
            [],
            Strategy.LEASE,
            int(high or request.after),
            token=token,
            taken_over=taken,
            _engine=engine,
        )
    finally:
        heartbeat.stop()
        release(engine, token)


class _Heartbeat(threading.Thread):
    """Renews a lease every third of its TTL until stopped (one UPDATE of one row)."""

    def __init__(self, engine: Engine, token: str, ttl: int) -> None:
        super().__init__(name=f"lease-{token[-8:]}", daemon=True)
        self.engine, self.token, self.ttl = engine, token, ttl
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(max(self.ttl / 3, 0.2)):
            try:
                renew(self.engine, self.token, self.ttl)
            except Exception as exc:  # the write's claim guard catches a lost lease
                log.warning("lease %s not renewed: %s", self.token, type(exc).__name__)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def renew(engine: Engine, token: str, ttl: int) -> bool:
    """Push the lease's expiry ``ttl`` seconds on; False if the claim is gone."""
    claims = t.claims
    now = store.utcnow()
    with engine.begin() as conn:
        hit = conn.execute(
            update(claims)
            .where(claims.c.token == token)
            .values(renewed_at=now, expires_at=now + timedelta(seconds=ttl))
        ).rowcount
    return bool(hit)


def release(engine: Engine, token: str) -> int:
    """Give a lease back: its leads are free again, its row is gone. Returns leads freed."""
    with engine.begin() as conn:
        return release_in(conn, token)


def release_in(conn: Connection, token: str) -> int:
    leads, claims = t.leads, t.claims
    freed = conn.execute(
        update(leads)
        .where(leads.c.claimed_by == token)
        .values(claimed_by=None, claim_expires_at=None)
    ).rowcount
    conn.execute(delete(claims).where(claims.c.token == token))
    return freed


# --------------------------------------------------------------------------- transactional


def _next_range(conn: Connection, request: Request) -> tuple[list[int], int]:
    """The next id range of ``size`` ids this transaction can hold, and the cursor after it."""
    leads = t.leads
    size, start = request.size, request.after + 1
    in_status = leads.c.status.in_(list(request.statuses))
    while True:
        query = select(func.min(leads.c.id)).where(in_status, leads.c.id >= start)
        if request.where is not None:
            query = query.where(request.where)
        first = conn.execute(query).scalar()
        if first is None:
            return [], start - 1
        number = int(first) // size
        if store.is_postgres(conn):
            held = conn.execute(
                select(
                    func.pg_try_advisory_xact_lock(func.hashtext(f"leadflow.{request.hop}"), number)
                )
            ).scalar_one()
            if not held:  # another worker has this range: try the next one
                start = (number + 1) * size
                continue
        ids = select(leads.c.id).where(
            in_status, leads.c.id >= number * size, leads.c.id < (number + 1) * size
        )
        if request.where is not None:
            ids = ids.where(request.where)
        found = list(conn.execute(ids.order_by(leads.c.id)).scalars())
        return found, (number + 1) * size - 1


def _lock_ids(conn: Connection, request: Request) -> tuple[list[int], int]:
    """The next ``size`` candidates above the cursor that are still waiting, row-locked."""
    leads = t.leads
    chunk = [int(i) for i in (request.ids or ()) if i > request.after][: request.size]
    if not chunk:
        return [], request.after
    query = select(leads.c.id).where(
        leads.c.id.in_(chunk), leads.c.status.in_(list(request.statuses))
    )
    if request.where is not None:
        query = query.where(request.where)
    if store.is_postgres(conn):
        query = query.with_for_update(skip_locked=True)
    return sorted(conn.execute(query).scalars()), chunk[-1]


def _serial(conn: Connection, request: Request) -> tuple[list[int], int]:
    """Wait for this hop's turn, then take the oldest ``size`` waiting leads."""
    leads = t.leads
    if store.is_postgres(conn):
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
            {"name": f"leadflow.{request.hop}"},
        )
    query = (
        select(leads.c.id)
        .where(leads.c.status.in_(list(request.statuses)), leads.c.id > request.after)
        .order_by(leads.c.id)
        .limit(request.size)
    )
    if request.where is not None:
        query = query.where(request.where)
    ids = list(conn.execute(query).scalars())
    return ids, (ids[-1] if ids else request.after)


# --------------------------------------------------------------------------- inspection


def held_by_others(conn: Connection, statuses: Sequence[str]) -> int:
    """Leads in ``statuses`` still claimed when a run ends: another run is working them, or
    a dead run's lease has not run out yet (``leadflow claims`` tells which)."""
    leads = t.leads
    return int(
        conn.execute(
            select(func.count())
            .select_from(leads)
            .where(leads.c.claimed_by.is_not(None), leads.c.status.in_(list(statuses)))
        ).scalar_one()
    )


def list_claims(conn: Connection, now: datetime | None = None) -> pd.DataFrame:
    """Every claim holding leads: hop, holder, run, age, expiry, leads held, and whether it
    is dead (expired, or a token with no claim row: left by an older version)."""
    now = now or store.utcnow()
    leads, claims = t.leads, t.claims
    held = (
        select(leads.c.claimed_by.label("token"), func.count().label("held"))
        .where(leads.c.claimed_by.is_not(None))
        .group_by(leads.c.claimed_by)
    )
    frame = store.read_frame(conn, held)
    rows = store.read_frame(conn, select(claims))
    merged = frame.merge(rows, on="token", how="outer")
    if merged.empty:
        return merged
    merged["held"] = merged["held"].fillna(0).astype(int)
    merged["hop"] = merged["hop"].fillna(merged["token"].str.split(":").str[0])
    expires = pd.to_datetime(merged["expires_at"], utc=True)
    merged["dead"] = expires.isna() | (expires < pd.Timestamp(now))
    return merged.sort_values(["dead", "hop"], ascending=[False, True]).reset_index(drop=True)


def release_dead(conn: Connection, now: datetime | None = None) -> int:
    """Free every lead held by a dead claim, whatever its hop; returns leads freed."""
    now = now or store.utcnow()
    leads = t.leads
    freed = conn.execute(
        update(leads).where(_dead_claims(now)).values(claimed_by=None, claim_expires_at=None)
    ).rowcount
    _forget_empty_claims(conn, now)
    return freed
