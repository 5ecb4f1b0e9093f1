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


def run_audit(conn: Connection, *, max_listed: int = 20) -> AuditReport:
    """Check the ledger invariants over the whole database."""
    report = AuditReport()
    b = t.capture_batches
    rows = conn.execute(
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
    problems = report.problems

    def problem(text: str) -> None:
        if len(problems) < max_listed:
            problems.append(text)
        elif len(problems) == max_listed:
            problems.append("... more problems not listed")

    raw = t.raw_captures
    stored_records = _count_by_batch(
        conn, select(raw.c.batch_id, func.sum(raw.c.records)).group_by(raw.c.batch_id)
    )
    e = t.lead_events
    q = t.quarantine
    # Every record of a batch must be accounted for exactly once: by the ledger event it
    # caused (admission or merge) or by its quarantine row.
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
    stored = {
        target: _count_by_batch(
            conn,
            select(table.c.batch_id, func.count())
            .where(table.c.batch_id.is_not(None))
            .group_by(table.c.batch_id),
        )
        for target, table in (("events", ev), ("activities", act))
    }
    record_counts = {
        int(batch): (int(total), int(distinct))
        for batch, total, distinct in conn.execute(
            select(
                accounted.c.batch_id,
                func.count(),
                func.count(func.distinct(accounted.c.record_no)),
            ).group_by(accounted.c.batch_id)
        )
    }
    chunk = t.capture_chunks
    chunk_sums = {
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
    quarantine_rows = _count_by_batch(
        conn,
        select(q.c.batch_id, func.count())
        .where(q.c.hop == "capture", q.c.released_at.is_(None))
        .group_by(q.c.batch_id),
    )
    admitted = _count_by_batch(
        conn,
        select(e.c.batch_id, func.count())
        .where(e.c.kind == "transition", e.c.from_status.is_(None))
        .group_by(e.c.batch_id),
    )
    merges = _count_by_batch(
        conn, select(e.c.batch_id, func.count()).where(e.c.kind == "merge").group_by(e.c.batch_id)
    )
    for row in rows:
        report.batches += 1
        report.received += row.received
        report.inserted += row.inserted
        report.merged += row.merged
        report.quarantined += row.quarantined
        batch = int(row.id)
        if row.received != row.inserted + row.merged + row.quarantined:
            problem(
                f"batch {batch}: received {row.received} != inserted {row.inserted} + merged "
                f"{row.merged} + quarantined {row.quarantined}"
            )
        if row.status == "running":
            alive = capture_locks.is_held(
                conn.engine, source=row.source, target=row.target, content_hash=row.content_hash
            )
            if not alive:  # its lock died with its process: the input is only partly in
                problem(
                    f"batch {batch}: still 'running' but its run has died; ingest the same "
                    "input again (same source) to resume it after its last committed chunk"
                )
            # Still being written, or died mid-way (a rerun resumes it): its committed
            # records must still be counted once each.
            total, distinct = record_counts.get(batch, (0, 0))
            if total != distinct:
                problem(
                    f"batch {batch}: {total - distinct} record(s) counted more than once "
                    f"({total} entries for {distinct} records)"
                )
            continue
        sums = chunk_sums.get(batch)
        for name in ("received", "inserted", "merged", "quarantined"):
            chunk_total = int(getattr(sums, name) or 0) if sums is not None else 0
            if chunk_total != getattr(row, name):
                problem(
                    f"batch {batch}: {name} {getattr(row, name)} but its chunks say {chunk_total}"
                )
        if stored_records.get(batch, 0) != row.received:
            problem(
                f"batch {batch}: received {row.received} but the raw chunks hold "
                f"{stored_records.get(batch, 0)} records"
            )
        total, distinct = record_counts.get(batch, (0, 0))
        # An event or activity received twice is stored once: its repeats (merged) have no
        # row of their own; every other record has exactly one.
        expected = row.received - row.merged if row.target in stored else row.received
        if total != expected or distinct != expected:
            problem(
                f"batch {batch}: {expected} records should be accounted for but {distinct} distinct "
                f"records are, by ledger, events and quarantine ({total} entries)"
            )
        if quarantine_rows.get(batch, 0) != row.quarantined:
            problem(
                f"batch {batch}: {row.quarantined} quarantined but {quarantine_rows.get(batch, 0)} quarantine rows"
            )
        if row.target in stored and stored[row.target].get(batch, 0) != row.inserted:
            problem(
                f"batch {batch}: {row.inserted} {row.target} inserted but "
                f"{stored[row.target].get(batch, 0)} stored"
            )
        if row.target == "leads":
            if admitted.get(batch, 0) != row.inserted:
                problem(
                    f"batch {batch}: {row.inserted} inserted but {admitted.get(batch, 0)} admission events"
                )
            if merges.get(batch, 0) != row.merged:
                problem(
                    f"batch {batch}: {row.merged} merged but {merges.get(batch, 0)} merge events"
                )

    # One input's records belong to one batch: a second running or complete batch of the
    # same content counts them again (the run that died mid-file and the rerun, say).
    twice = conn.execute(
        select(b.c.source, b.c.target, func.min(b.c.id), func.max(b.c.id), func.count())
        .where(b.c.status.in_(("running", "complete")), b.c.received > 0)
        .group_by(b.c.source, b.c.target, b.c.content_hash)
        .having(func.count() > 1)
    ).all()
    for source, target, first, last, count in twice:
        problem(
            f"batches {first}..{last} ({count} of them, source {source!r}, {target}) hold the "
            "same input: its records are counted more than once"
        )

    leads = t.leads
    report.leads = conn.execute(select(func.count()).select_from(leads)).scalar_one()
    report.ledger_events = conn.execute(select(func.count()).select_from(e)).scalar_one()
    lead_batches = sum(r.inserted for r in rows if r.target == "leads")
    if report.leads != lead_batches:
        problem(f"{report.leads} leads stored but lead batches inserted {lead_batches}")

    # Ledger events of capture must point at leads that exist.
    orphans = conn.execute(
        select(func.count())
        .select_from(e.outerjoin(leads, e.c.lead_id == leads.c.id))
        .where(leads.c.id.is_(None))
    ).scalar_one()
    if orphans:
        problem(f"{orphans} ledger events point at leads that do not exist")

    # Each lead: exactly one admission, and its status is its last transition's.
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
    if unadmitted:
        problem(f"{unadmitted} leads without exactly one admission event in the ledger")
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
    if drifted:
        problem(f"{drifted} leads whose status differs from their last ledger transition")
    return report


def status_counts(conn: Connection) -> dict[str, int]:
    leads = t.leads
    return {
        status: int(n)
        for status, n in conn.execute(
            select(leads.c.status, func.count()).group_by(leads.c.status).order_by(leads.c.status)
        )
    }
