"""Capture, for records posted one at a time (``POST /leads``): the same hop as files.

Posted records are captured in small groups: every record that arrives while the previous
group is being written joins the next one. A group is one batch (kind ``http``) of one
chunk, mapped with the source's mapping YAML, gated, merged and written in one transaction
exactly like a chunk of a file, so the ledger, the raw bytes and the quarantine account for
every posted record. A burst of posts costs a handful of transactions, not one per lead.

Each record's answer comes back to its request: the lead it created or merged into, or the
reasons it was quarantined. One record never fails its neighbours: the quarantine-rate
limit does not apply to posted groups (a record's reasons are its own).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from leadflow import quality, store
from leadflow import tables as t
from leadflow.capture import prepare, sources, write
from leadflow.capture.rules import SourceMapping

log = logging.getLogger(__name__)

KIND = "http"
URI = "http:POST /leads"


@dataclass
class Posted:
    """What became of one posted record."""

    status: str  # inserted | merged | quarantined
    batch_id: int
    record_no: int
    lead_id: int | None = None
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "batch_id": self.batch_id}
        if self.lead_id is not None:
            out["lead_id"] = self.lead_id
        if self.reasons:
            out["reasons"] = self.reasons
        return out


def _body(records: Sequence[dict[str, Any]], received_at: datetime) -> bytes:
    """The group as received (JSON Lines), stamped with when it arrived: two groups with the
    same records are two deliveries (a form sent twice), merged into one lead by identity."""
    lines = [json.dumps({"received_at": received_at.isoformat()})]
    lines += [json.dumps(r, ensure_ascii=False, sort_keys=True, default=str) for r in records]
    return ("\n".join(lines) + "\n").encode()


def capture_records(
    database_url: str,
    records: Sequence[dict[str, Any]],
    mapping: SourceMapping,
    version: str,
    *,
    source: str,
    now: datetime | None = None,
) -> list[Posted]:
    """Capture ``records`` as one batch; one ``Posted`` per record, in order."""
    now = now or datetime.now(UTC)
    engine = store.get_engine(database_url)
    page = sources.ApiPage(uri=URI, body=_body(records, now), records=list(records))
    with write.content_lock(engine, source=source, target="leads", content_hash=page.content_hash):
        opened = write.open_batch(
            engine,
            source=source,
            target="leads",
            kind=KIND,
            uri=URI,
            content_hash=page.content_hash,
            size=len(page.body),
            header=None,
            mapping_version=version,
            flow_run_id=None,
        )
        batch_id = opened.batch_id
        status, landed = "complete", None
        try:
            chunk = prepare.prepare_chunk(
                sources.page_chunk(page), mapping, source, now, batch_id, max_quarantine_rate=1.0
            )
            # A group whose every record failed is rejected as a chunk too; that says
            # nothing about a record, so each is held (and counted) under its own reasons.
            held = chunk.quarantined
            chunk.quarantined = held.assign(reasons=[_own(list(r)) for r in held["reasons"]])
            landed = write.write_capture_chunk(engine, chunk=chunk, mapping=mapping, now=now).landed
        except quality.GateFailed:
            status = "failed"  # every record of the group failed its row checks: all held
        except Exception as exc:  # nothing of the group was stored; its posts hear a 503
            write.close_batch(
                engine, batch_id, status="failed", message=f"not written: {type(exc).__name__}"
            )
            raise
        write.close_batch(engine, batch_id, status=status)
    return outcomes(batch_id, len(records), landed, chunk.quarantined)


def close_abandoned(database_url: str) -> int:
    """Close the posted groups a killed server left ``running`` (their lock died with it).

    A posted group cannot be resumed like a file: nobody will post that exact group again
    (its clients got no 202 and post their records again, in other groups). A group whose
    chunk was committed is complete; one killed before its commit wrote nothing and is
    closed ``failed`` saying so. Returns how many were closed."""
    from leadflow.capture import locks as capture_locks

    b, chunks = t.capture_batches, t.capture_chunks
    engine = store.get_engine(database_url)
    with engine.connect() as conn:
        running = conn.execute(
            select(b.c.id, b.c.source, b.c.target, b.c.content_hash).where(
                b.c.kind == KIND, b.c.status == "running"
            )
        ).all()
        committed = set(
            conn.execute(
                select(chunks.c.batch_id).where(chunks.c.batch_id.in_([r.id for r in running]))
            ).scalars()
        )
    closed = 0
    for row in running:
        if capture_locks.is_held(
            engine, source=row.source, target=row.target, content_hash=row.content_hash
        ):
            continue  # another server is writing it right now
        if row.id in committed:
            write.close_batch(engine, row.id, status="complete", message="closed after a restart")
        else:
            write.close_batch(
                engine,
                row.id,
                status="failed",
                message="the server stopped before this group was written: nothing of it was "
                "stored and none of its posts was answered 202 (their clients post again)",
            )
        closed += 1
    if closed:
        log.warning("closed %d posted group(s) a stopped server left running", closed)
    return closed


def outcomes(batch_id: int, received: int, landed: Any, quarantined: Any) -> list[Posted]:
    """Each record of a posted batch, from what the writer stored (``landed``: record_no,
    lead_id, outcome; None when the gate held them all) and what it quarantined."""
    reasons = {
        int(no): _own([] if r is None else list(r))
        for no, r in zip(quarantined["record_no"], quarantined["reasons"], strict=True)
    }
    stored = {}
    if landed is not None:
        stored = {
            int(no): (int(lead), outcome)
            for no, lead, outcome in zip(
                landed["record_no"], landed["lead_id"], landed["outcome"], strict=True
            )
        }
    results = []
    for no in range(1, received + 1):
        if no in reasons:
            results.append(Posted("quarantined", batch_id, no, reasons=reasons[no]))
        elif no in stored:
            lead, outcome = stored[no]
            results.append(Posted(outcome, batch_id, no, lead_id=lead))
        else:  # cannot happen when the accounting holds; say so rather than invent an answer
            raise RuntimeError(f"batch {batch_id} record {no}: neither stored nor quarantined")
    return results


def _own(reasons: list[str]) -> list[str]:
    """A record's own reasons: a group whose every record failed is also rejected as a
    chunk, which says nothing about this record."""
    own = [r for r in reasons if not r.startswith("chunk_rejected")]
    return own or list(reasons)


class Batcher:
    """Groups posted records: ``submit`` returns a future; one thread writes the groups.

    A record waits for the group being written to finish, then goes out with every record
    that arrived meanwhile (at most ``max_group``), so a lone post is written at once and a
    burst is written in a few large chunks.
    """

    def __init__(
        self,
        database_url: str,
        mapping: SourceMapping,
        version: str,
        *,
        source: str,
        max_group: int = 500,
        on_captured: Any = None,
    ) -> None:
        self.database_url = database_url
        self.mapping, self.version, self.source = mapping, version, source
        self.max_group = max_group
        self.on_captured = on_captured  # called with the group's results, after the commit
        self._queue: queue.Queue[tuple[dict[str, Any], Future[Posted]]] = queue.Queue()
        close_abandoned(database_url)
        self._thread = threading.Thread(target=self._loop, name="capture-batcher", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> Future[Posted]:
        future: Future[Posted] = Future()
        self._queue.put((record, future))
        return future

    def _loop(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < self.max_group:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(group)

    def _write(self, group: list[tuple[dict[str, Any], Future[Posted]]]) -> None:
        started = time.monotonic()
        try:
            results = capture_records(
                self.database_url,
                [record for record, _ in group],
                self.mapping,
                self.version,
                source=self.source,
            )
        except Exception as exc:  # the store is down: every request of the group hears it
            log.error("capture of %d posted record(s) failed: %s", len(group), type(exc).__name__)
            for _, future in group:
                future.set_exception(exc)
            return
        log.info("captured %d posted record(s) in %.3f s", len(group), time.monotonic() - started)
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)
        if self.on_captured is not None:
            try:
                self.on_captured(results)
            except Exception as exc:  # the lane is a shortcut; the pipeline still has them
                log.warning("handing %d lead(s) to the lane failed: %s", len(results), exc)
