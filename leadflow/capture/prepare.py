"""Capture, step three: a chunk prepared without the database (mapped, gated, merged
within itself, compressed), optionally in worker processes ahead of the writer."""

from __future__ import annotations

import hashlib
import multiprocessing
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from leadflow import quality
from leadflow.capture.identity import NO_LEADS, MergePlan, plan_merge
from leadflow.capture.mapping import prepare_records
from leadflow.capture.rules import SourceMapping
from leadflow.capture.sources import RECORD_NO, RecordChunk

HOP = "captured"


def compress(text: str) -> tuple[bytes, str]:
    """(zlib of the text's bytes as received, SHA-256 of those bytes)."""
    data = text.encode("utf-8", "surrogateescape")
    return zlib.compress(data, 1), hashlib.sha256(data).hexdigest()


@dataclass
class PreparedChunk:
    """Everything about a chunk that needs no database: mapped, normalised, split by the
    row-level gate, de-duplicated within itself, checked by the batch-level gate, and
    compressed as received. CPU work only, so it can run in a worker process while the
    chunk before it is being written."""

    batch_id: int
    chunk_no: int
    received: int
    first_record_no: int | None
    last_record_no: int | None
    raw_content: bytes  # zlib of the chunk's bytes as received
    raw_hash: str
    passed: pd.DataFrame  # records that passed the row-level gate
    quarantined: pd.DataFrame  # record_no, raw, reasons (every record when rejected)
    local: MergePlan  # the chunk merged within itself, as if the store were empty
    gate: quality.GateResult
    blanked: dict[str, int] = field(default_factory=dict)


def prepare_chunk(
    chunk: RecordChunk,
    mapping: SourceMapping,
    source: str,
    now: datetime,
    batch_id: int,
    max_quarantine_rate: float | None = None,
) -> PreparedChunk:
    prepared = prepare_records(chunk, mapping, source=source, now=now)
    split = quality.split_rows(HOP, prepared)
    local = plan_merge(split.passed, NO_LEADS, mapping.merge)
    received = len(prepared)
    gate = quality.check_batch(
        HOP,
        local.leads,
        batch_ref=f"capture:{batch_id}/{chunk.chunk_no}",
        received=received,
        quarantined=len(split.quarantined),
        row_checks=split.checks,
        max_quarantine_rate=max_quarantine_rate,
        row_validation=split.validation,
    )
    quarantined = split.quarantined
    if not gate.success:
        quarantined = rejected_records(prepared, quarantined, gate)
    blanked: dict[str, int] = {}
    for fields in split.passed["blanked_fields"].dropna():
        for name in fields.split(", "):
            blanked[name] = blanked.get(name, 0) + 1
    raw_content, raw_hash = compress(chunk.text)
    numbers = chunk.records[RECORD_NO]
    return PreparedChunk(
        batch_id=batch_id,
        chunk_no=chunk.chunk_no,
        received=received,
        first_record_no=int(numbers.min()) if len(numbers) else None,
        last_record_no=int(numbers.max()) if len(numbers) else None,
        raw_content=raw_content,
        raw_hash=raw_hash,
        passed=split.passed.drop(columns=["raw", "parse_error", "identity", "invalid_fields"]),
        quarantined=quarantined[["record_no", "raw", "reasons"]],
        local=local,
        gate=gate,
        blanked=blanked,
    )


def rejected_records(
    prepared: pd.DataFrame, quarantined: pd.DataFrame, gate: quality.GateResult
) -> pd.DataFrame:
    """Every record of a chunk its batch-level gate rejected: each keeps its own row-level
    reasons and gains ``chunk_rejected: <failed checks>``."""
    failed = ", ".join(c["name"] for c in gate.checks if not c["success"] and c["level"] == "batch")
    own = dict(zip(quarantined["record_no"], quarantined["reasons"], strict=True))
    return prepared.assign(
        reasons=[[*own.get(no, []), f"chunk_rejected: {failed}"] for no in prepared["record_no"]]
    )


def _warm_worker() -> None:
    """Pay the imports (pandas, GX) once per worker process, before the first chunk."""
    quality.load_suite(HOP)


def prepared_chunks(
    chunks: Iterable[RecordChunk],
    mapping: SourceMapping,
    source: str,
    now: datetime,
    *,
    batch_id: int,
    max_quarantine_rate: float | None = None,
    workers: int = 0,
) -> Iterator[PreparedChunk]:
    """Prepared chunks in order. With ``workers`` > 0 they are prepared in worker
    processes, a chunk or two ahead of the consumer, so that preparing one chunk overlaps
    with writing the one before; memory stays bounded by that lookahead."""
    arguments = (mapping, source, now, batch_id, max_quarantine_rate)
    if workers <= 0:
        for chunk in chunks:
            yield prepare_chunk(chunk, *arguments)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_warm_worker) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(prepare_chunk, chunk, *arguments))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
