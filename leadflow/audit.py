"""The ledger audit: proof that nothing received was dropped.

For every capture batch: received = inserted + merged + quarantined, and each of those
numbers is backed by rows: raw records with that outcome, ledger events, quarantine rows.
Every lead was admitted by exactly one ledger event, and its current status is the one its
last ledger transition says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select, union_all

from leadflow import tables as t
from leadflow.capture import locks as capture_locks


@dataclass
class AuditReport:
    batches: int = 0
    received: int = 0
    inserted: int = 0
    merged: int = 0
    quarantined: int = 0
    leads: int = 0
    ledger_events: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "batches": self.batches,
            "received": self.received,
            "inserted": self.inserted,
            "merged": self.merged,
            "quarantined": self.quarantined,
            "leads": self.leads,
            "ledger_events": self.ledger_events,
            "problems": self.problems,
        }


def _count_by_batch(conn: Connection, statement: Any) -> dict[int, int]:
    # Leads admitted outside a capture (tests, imports by hand) have no batch.
    return {int(row[0]): int(row[1]) for row in conn.execute(statement) if row[0] is not None}


MORE_PROBLEMS = "... more problems not listed"


class ProblemList:
    """The report's problems as the checks find them: the first ``max_listed`` are listed,
    then one line says there were more, and the rest are dropped.

    With ``max_listed=2``, adding ``["a", "b"]`` then ``["c", "d"]`` lists
    ``["a", "b", "... more problems not listed"]``.
    """

    def __init__(self, listed: list[str], max_listed: int) -> None:
        self.listed = listed
        self.max_listed = max_listed

    def add(self, texts: list[str]) -> None:
        for text in texts:
            if len(self.listed) < self.max_listed:
                self.listed.append(text)
            elif len(self.listed) == self.max_listed:
                self.listed.append(MORE_PROBLEMS)


@dataclass(frozen=True)
class BatchBacking:
    """Per batch id, the rows that back a batch's numbers (a batch with none is absent)."""

    raw_records: dict[int, int]  # records its raw chunks hold
    stored: dict[str, dict[int, int]]  # target ("events", "activities") -> rows stored
    records: dict[int, tuple[int, int]]  # (entries, distinct records) accounted for
    chunks: dict[int, Any]  # its chunks' received, inserted, merged and quarantined, summed
    quarantine_rows: dict[int, int]  # open capture quarantine rows
    admissions: dict[int, int]  # ledger events that admitted a lead
    merges: dict[int, int]  # ledger merge events


def run_audit(conn: Connection, *, max_listed: int = 20) -> AuditReport:
    """Check the ledger invariants over the whole database.

    In order: each batch's own numbers add up and are backed by rows (``batch_problems``);
    no input was captured by two live batches; the leads stored are the lead batches'
    inserts; every ledger event has its lead; every lead was admitted once, and its status
    is its last transition's. Only the first ``max_listed`` problems are listed.
    """
    report = AuditReport()
    problems = ProblemList(report.problems, max_listed)
    batches = _batches(conn)
    _tally(report, batches)
    backing = _batch_backing(conn)
    for row in batches:
        alive = row.status == "running" and _run_alive(conn, row)
        problems.add(batch_problems(row, backing, alive=alive))
    problems.add(_inputs_captured_twice(conn))
    report.leads, report.ledger_events = _lead_and_event_totals(conn)
    problems.add(leads_match_batches(report.leads, batches))
    problems.add(_orphan_events(conn))
    problems.add(_leads_not_admitted_once(conn))
    problems.add(_statuses_drifted(conn))
    return report


def _batches(conn: Connection) -> list[Any]:
    """The capture batches that took records in (a duplicate input's batch takes none), in
    id order."""
    b = t.capture_batches
    return conn.execute(
        select(
            b.c.id,
            b.c.source,
            b.c.target,
            b.c.content_hash,
            b.c.status,
            b.c.received,
            b.c.inserted,
            b.c.merged,
            b.c.quarantined,
        )
        .where(b.c.status != "duplicate")
        .order_by(b.c.id)
    ).all()


def _tally(report: AuditReport, batches: list[Any]) -> None:
    """Add the batches' own numbers (running ones included) into the report."""
    for row in batches:
        report.batches += 1
        report.received += row.received
        report.inserted += row.inserted
        report.merged += row.merged
        report.quarantined += row.quarantined


def _batch_backing(conn: Connection) -> BatchBacking:
    """Count, per batch, the rows that back its numbers (one grouped query each)."""
    raw, e, q = t.raw_captures, t.lead_events, t.quarantine
    ev, act = t.engagement_events, t.activities
    return BatchBacking(
        raw_records=_count_by_batch(
            conn, select(raw.c.batch_id, func.sum(raw.c.records)).group_by(raw.c.batch_id)
        ),
        stored={
            target: _count_by_batch(
                conn,
                select(table.c.batch_id, func.count())
                .where(table.c.batch_id.is_not(None))
                .group_by(table.c.batch_id),
            )
            for target, table in (("events", ev), ("activities", act))
        },
        records=_records_accounted_for(conn),
        chunks=_chunk_sums(conn),
        quarantine_rows=_count_by_batch(
            conn,
            select(q.c.batch_id, func.count())
            .where(q.c.hop == "capture", q.c.released_at.is_(None))
            .group_by(q.c.batch_id),
        ),
        admissions=_count_by_batch(
            conn,
            select(e.c.batch_id, func.count())
            .where(e.c.kind == "transition", e.c.from_status.is_(None))
            .group_by(e.c.batch_id),
        ),
        merges=_count_by_batch(
            conn,
            select(e.c.batch_id, func.count()).where(e.c.kind == "merge").group_by(e.c.batch_id),
        ),
    )


def _records_accounted_for(conn: Connection) -> dict[int, tuple[int, int]]:
    """Per batch, (entries, distinct record numbers) among the rows that account for its
    records.

    Every record of a batch must be accounted for exactly once: by the ledger event it caused
    (admission or merge), by its quarantine row, or by the event or activity it stored. A
    batch whose records 1 and 2 have a ledger event each and record 2 a quarantine row too
    gives ``(3, 2)``: one record counted twice.
    """
    e, q = t.lead_events, t.quarantine
    ev, act = t.engagement_events, t.activities
    accounted = union_all(
        select(e.c.batch_id, e.c.record_no).where(
            e.c.batch_id.is_not(None), e.c.record_no.is_not(None)
        ),
        # A released record is counted by the ledger event it caused, not by its old row.
        select(q.c.batch_id, q.c.record_no).where(q.c.hop == "capture", q.c.released_at.is_(None)),
        select(ev.c.batch_id, ev.c.record_no).where(ev.c.batch_id.is_not(None)),
        select(act.c.batch_id, act.c.record_no).where(act.c.batch_id.is_not(None)),
    ).subquery()
    return {
        int(batch): (int(total), int(distinct))
        for batch, total, distinct in conn.execute(
            select(
                accounted.c.batch_id,
                func.count(),
                func.count(func.distinct(accounted.c.record_no)),
            ).group_by(accounted.c.batch_id)
        )
    }


def _chunk_sums(conn: Connection) -> dict[int, Any]:
    """Per batch, its committed chunks' received, inserted, merged and quarantined, summed."""
    chunk = t.capture_chunks
    return {
        int(r.batch_id): r
        for r in conn.execute(
            select(
                chunk.c.batch_id,
                func.sum(chunk.c.received).label("received"),
                func.sum(chunk.c.inserted).label("inserted"),
                func.sum(chunk.c.merged).label("merged"),
                func.sum(chunk.c.quarantined).label("quarantined"),
            ).group_by(chunk.c.batch_id)
        )
    }


def _run_alive(conn: Connection, row: Any) -> bool:
    """Whether the process capturing a running batch still holds its input's lock."""
    return capture_locks.is_held(
        conn.engine, source=row.source, target=row.target, content_hash=row.content_hash
    )


# --------------------------------------------------------------------------- per batch


def batch_problems(row: Any, backing: BatchBacking, *, alive: bool) -> list[str]:
    """One batch's problems (pure): its numbers add up, and, once complete, each is backed
    by rows. A running batch (``alive``: its run still holds the lock) is only checked for
    records counted twice."""
    problems = _balance(row)
    if row.status == "running":
        return problems + _running(row, backing, alive=alive)
    return (
        problems
        + _chunk_totals(row, backing)
        + _raw_records(row, backing)
        + _records_accounted(row, backing)
        + _quarantine_rows(row, backing)
        + _rows_stored(row, backing)
        + _ledger_events(row, backing)
    )


def _balance(row: Any) -> list[str]:
    """received = inserted + merged + quarantined."""
    if row.received == row.inserted + row.merged + row.quarantined:
        return []
    return [
        f"batch {int(row.id)}: received {row.received} != inserted {row.inserted} + merged "
        f"{row.merged} + quarantined {row.quarantined}"
    ]


def _running(row: Any, backing: BatchBacking, *, alive: bool) -> list[str]:
    """A running batch whose run died, and committed records counted more than once."""
    batch = int(row.id)
    problems = []
    if not alive:  # its lock died with its process: the input is only partly in
        problems.append(
            f"batch {batch}: still 'running' but its run has died; ingest the same "
            "input again (same source) to resume it after its last committed chunk"
        )
    # Still being written, or died mid-way (a rerun resumes it): its committed
    # records must still be counted once each.
    total, distinct = backing.records.get(batch, (0, 0))
    if total != distinct:
        problems.append(
            f"batch {batch}: {total - distinct} record(s) counted more than once "
            f"({total} entries for {distinct} records)"
        )
    return problems


def _chunk_totals(row: Any, backing: BatchBacking) -> list[str]:
    """Each of the batch's numbers is the sum of its chunks'."""
    batch = int(row.id)
    sums = backing.chunks.get(batch)
    problems = []
    for name in ("received", "inserted", "merged", "quarantined"):
        chunk_total = int(getattr(sums, name) or 0) if sums is not None else 0
        if chunk_total != getattr(row, name):
            problems.append(
                f"batch {batch}: {name} {getattr(row, name)} but its chunks say {chunk_total}"
            )
    return problems


def _raw_records(row: Any, backing: BatchBacking) -> list[str]:
    """The raw chunks hold as many records as the batch received."""
    batch = int(row.id)
    held = backing.raw_records.get(batch, 0)
    if held == row.received:
        return []
    return [f"batch {batch}: received {row.received} but the raw chunks hold {held} records"]


def _records_accounted(row: Any, backing: BatchBacking) -> list[str]:
    """Every record is accounted for exactly once.

    An event or activity received twice is stored once: its repeats (merged) have no row of
    their own; every other record has exactly one. An events batch that received 5 with 1
    merged needs 4 distinct records in 4 entries; a leads batch that received 5 needs 5.
    """
    batch = int(row.id)
    total, distinct = backing.records.get(batch, (0, 0))
    expected = row.received - row.merged if row.target in backing.stored else row.received
    if total == expected and distinct == expected:
        return []
    return [
        f"batch {batch}: {expected} records should be accounted for but {distinct} distinct "
        f"records are, by ledger, events and quarantine ({total} entries)"
    ]


def _quarantine_rows(row: Any, backing: BatchBacking) -> list[str]:
    """One open quarantine row per record quarantined."""
    batch = int(row.id)
    rows = backing.quarantine_rows.get(batch, 0)
    if rows == row.quarantined:
        return []
    return [f"batch {batch}: {row.quarantined} quarantined but {rows} quarantine rows"]


def _rows_stored(row: Any, backing: BatchBacking) -> list[str]:
    """An events or activities batch stored one row per record inserted."""
    batch = int(row.id)
    if row.target not in backing.stored:
        return []
    stored = backing.stored[row.target].get(batch, 0)
    if stored == row.inserted:
        return []
    return [f"batch {batch}: {row.inserted} {row.target} inserted but {stored} stored"]


def _ledger_events(row: Any, backing: BatchBacking) -> list[str]:
    """A leads batch has one admission event per lead inserted and one merge event per
    record merged."""
    if row.target != "leads":
        return []
    batch = int(row.id)
    problems = []
    admitted = backing.admissions.get(batch, 0)
    if admitted != row.inserted:
        problems.append(f"batch {batch}: {row.inserted} inserted but {admitted} admission events")
    merges = backing.merges.get(batch, 0)
    if merges != row.merged:
        problems.append(f"batch {batch}: {row.merged} merged but {merges} merge events")
    return problems


# --------------------------------------------------------------------------- across batches


def _inputs_captured_twice(conn: Connection) -> list[str]:
    """One input's records belong to one batch: a second running or complete batch of the
    same content counts them again (the run that died mid-file and the rerun, say)."""
    b = t.capture_batches
    twice = conn.execute(
        select(b.c.source, b.c.target, func.min(b.c.id), func.max(b.c.id), func.count())
        .where(b.c.status.in_(("running", "complete")), b.c.received > 0)
        .group_by(b.c.source, b.c.target, b.c.content_hash)
        .having(func.count() > 1)
    ).all()
    return [
        f"batches {first}..{last} ({count} of them, source {source!r}, {target}) hold the "
        "same input: its records are counted more than once"
        for source, target, first, last, count in twice
    ]


def _lead_and_event_totals(conn: Connection) -> tuple[int, int]:
    """The leads stored and the ledger events recorded."""
    leads = conn.execute(select(func.count()).select_from(t.leads)).scalar_one()
    events = conn.execute(select(func.count()).select_from(t.lead_events)).scalar_one()
    return leads, events


def leads_match_batches(leads: int, batches: list[Any]) -> list[str]:
    """The leads stored are the ones the lead batches (running ones too) inserted (pure)."""
    inserted = sum(r.inserted for r in batches if r.target == "leads")
    if leads == inserted:
        return []
    return [f"{leads} leads stored but lead batches inserted {inserted}"]


# --------------------------------------------------------------------------- per lead


def _orphan_events(conn: Connection) -> list[str]:
    """Ledger events of capture must point at leads that exist."""
    leads, e = t.leads, t.lead_events
    orphans = conn.execute(
        select(func.count())
        .select_from(e.outerjoin(leads, e.c.lead_id == leads.c.id))
        .where(leads.c.id.is_(None))
    ).scalar_one()
    return [f"{orphans} ledger events point at leads that do not exist"] if orphans else []


def _leads_not_admitted_once(conn: Connection) -> list[str]:
    """Each lead was admitted by exactly one ledger event."""
    leads, e = t.leads, t.lead_events
    admissions = (
        select(e.c.lead_id, func.count().label("n"))
        .where(e.c.kind == "transition", e.c.from_status.is_(None))
        .group_by(e.c.lead_id)
        .subquery()
    )
    unadmitted = conn.execute(
        select(func.count())
        .select_from(leads.outerjoin(admissions, admissions.c.lead_id == leads.c.id))
        .where((admissions.c.n.is_(None)) | (admissions.c.n != 1))
    ).scalar_one()
    if not unadmitted:
        return []
    return [f"{unadmitted} leads without exactly one admission event in the ledger"]


def _statuses_drifted(conn: Connection) -> list[str]:
    """Each lead's status is the one its last ledger transition (highest id) moved it to."""
    leads, e = t.leads, t.lead_events
    ranked = (
        select(
            e.c.lead_id,
            e.c.to_status,
            func.row_number().over(partition_by=e.c.lead_id, order_by=e.c.id.desc()).label("rn"),
        )
        .where(e.c.kind == "transition")
        .subquery()
    )
    last = select(ranked.c.lead_id, ranked.c.to_status).where(ranked.c.rn == 1).subquery()
    drifted = conn.execute(
        select(func.count())
        .select_from(leads.join(last, last.c.lead_id == leads.c.id))
        .where(leads.c.status != last.c.to_status)
    ).scalar_one()
    if not drifted:
        return []
    return [f"{drifted} leads whose status differs from their last ledger transition"]


def status_counts(conn: Connection) -> dict[str, int]:
    leads = t.leads
    return {
        status: int(n)
        for status, n in conn.execute(
            select(leads.c.status, func.count()).group_by(leads.c.status).order_by(leads.c.status)
        )
    }
