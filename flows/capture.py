"""Capture flow: read a file, a folder or a REST API; gate and store leads chunk by chunk.

Each received input (file or API page) is one batch; re-receiving identical content is a
no-op. A chunk the gate rejects is quarantined whole and makes the run Failed, after the
other chunks have been processed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from sqlalchemy import Engine

from leadflow import store
from leadflow.mapping import SourceMapping, load_mapping
from leadflow.settings import get_settings
from tasks import capture as capture_tasks
from tasks import events as events_tasks
from tasks import quality, sources
from tasks.sources import RecordChunk

PARALLEL_FROM_BYTES = 8 << 20  # smaller inputs are not worth a worker process's start-up


@dataclass
class InputInfo:
    uri: str
    content_hash: str
    size: int
    header: list[str] | None
    mapping: SourceMapping


@task(name="inspect-input", cache_policy=NO_CACHE, task_run_name="inspect-{uri}")
def inspect_input(uri: str, mapping: SourceMapping) -> InputInfo:
    """Hash the input and check its header against the mapping (nothing is written)."""
    digest, size = sources.content_hash(uri)
    kind = sources._format_of(uri, mapping.format)
    if kind == "csv":
        header = sources.read_header(uri, encoding=mapping.encoding, delimiter=mapping.delimiter)
    else:
        header = sources.peek_columns(uri, encoding=mapping.encoding)
    if header:
        mapping = mapping.resolve(header)
        sources.check_columns(uri, header, mapping.required_columns())
    return InputInfo(uri=uri, content_hash=digest, size=size, header=header, mapping=mapping)


@task(name="api-token", cache_policy=NO_CACHE)
def api_token(block_name: str | None) -> str | None:
    if not block_name:
        return None
    from prefect.blocks.system import Secret

    return Secret.load(block_name).get()


def _empty_summary() -> dict[str, Any]:
    return {
        "received": 0,
        "inserted": 0,
        "merged": 0,
        "quarantined": 0,
        "batch_ids": [],
        "duplicates": [],
        "rejected_chunks": [],
        "blanked": {},
    }


def _add(summary: dict[str, Any], outcome: capture_tasks.ChunkOutcome) -> None:
    for name, value in outcome.counts().items():
        summary[name] += value
    for name, count in outcome.blanked.items():
        summary["blanked"][name] = summary["blanked"].get(name, 0) + count


@dataclass
class _Run:
    """What every batch of one capture run shares."""

    database_url: str
    engine: Engine
    source: str
    now: datetime
    max_quarantine_rate: float | None
    version: str
    flow_run_id: str | None
    summary: dict[str, Any]
    gates: list[quality.GateResult]

    def open(self, **batch: Any) -> int | None:
        """Record a received input; None when identical content was already captured."""
        batch_id, earlier = capture_tasks.open_batch(
            self.engine,
            source=self.source,
            mapping_version=self.version,
            flow_run_id=self.flow_run_id,
            **batch,
        )
        self.summary["batch_ids"].append(batch_id)
        if earlier:
            self.summary["duplicates"].append(batch_id)
            return None
        return batch_id

    def write(
        self,
        batch_id: int,
        chunks: Iterable[RecordChunk],
        mapping: SourceMapping,
        *,
        workers: int = 0,
        cursor: tuple[str, str] | None = None,
    ) -> bool:
        """Write one batch's chunks (leads or events, as the mapping's target says) and
        close the batch; True when every chunk was accepted."""
        if mapping.target == "events":
            states = (
                (
                    chunk.chunk_no,
                    events_tasks.capture_events_chunk(
                        self.database_url,
                        batch_id,
                        chunk,
                        mapping,
                        self.source,
                        self.now,
                        self.max_quarantine_rate,
                        cursor,
                        return_state=True,
                    ),
                )
                for chunk in chunks
            )
        else:
            prepared = capture_tasks.prepared_chunks(
                chunks,
                mapping,
                self.source,
                self.now,
                batch_id=batch_id,
                max_quarantine_rate=self.max_quarantine_rate,
                workers=workers,
            )
            states = (
                (
                    chunk.chunk_no,
                    capture_tasks.capture_chunk(
                        self.database_url, chunk, mapping, self.now, cursor, return_state=True
                    ),
                )
                for chunk in prepared
            )
        accepted = True
        for chunk_no, state in states:
            try:
                outcome = state.result()
            except quality.GateFailed as failure:
                accepted = False
                self.gates.append(failure.result)
                self.summary["rejected_chunks"].append(f"{batch_id}/{chunk_no}")
                self.summary["received"] += failure.result.evaluated
                self.summary["quarantined"] += failure.result.evaluated
                continue
            _add(self.summary, outcome)
            self.gates.append(outcome.gate)
        capture_tasks.close_batch(
            self.engine, batch_id, status="complete" if accepted else "failed"
        )
        return accepted


@flow(name="capture", flow_run_name="capture-{source}", log_prints=False)
def capture(
    path: str,
    source: str,
    mapping_path: str | None = None,
    now: datetime | None = None,
    max_quarantine_rate: float | None = None,
    database_url: str | None = None,
    chunk_size: int | None = None,
    target: str | None = None,
) -> State:
    """Ingest leads (or, with ``target="events"``, engagement events) from a CSV/JSON Lines
    file or folder (local or fsspec URL) or a REST API.

    Returns a Completed state whose data is the summary (received, inserted, merged,
    quarantined, batch ids); Failed, with the same data, if any chunk was rejected.
    """
    started = time.monotonic()
    settings = get_settings()
    database_url = database_url or settings.database_url
    now = now or datetime.now(UTC)
    chunk_size = chunk_size or settings.batch_size
    mapping, version = load_mapping(mapping_path)
    if target is not None and target != mapping.target:
        mapping = mapping.model_copy(update={"target": target})
    source = source or mapping.source or "unknown"
    engine = store.get_engine(database_url)
    summary = _empty_summary()
    gates: list[quality.GateResult] = []
    run = _Run(
        database_url,
        engine,
        source,
        now,
        max_quarantine_rate,
        version,
        flow_run.get_id(),
        summary,
        gates,
    )
    all_accepted = True

    if mapping.api is not None:
        token = api_token(mapping.api.token_block)
        with engine.connect() as conn:
            since = capture_tasks.load_cursor(conn, source)
        for page in sources.fetch_pages(path, mapping.api, token=token, since=since):
            if not page.records:
                continue  # nothing new since the cursor: not a delivery
            batch_id = run.open(
                target=mapping.target,
                kind="api",
                uri=page.uri,
                content_hash=page.content_hash,
                size=len(page.body),
                header=None,
            )
            if batch_id is None:
                continue
            chunk = sources.page_chunk(page)
            value = sources.cursor_from(chunk.records, mapping.api.cursor_field)
            cursor = (source, value) if value else None
            all_accepted &= run.write(batch_id, [chunk], mapping, cursor=cursor)
    else:
        # Check every input before writing anything: a missing column stops the run here.
        inputs = [inspect_input(uri, mapping) for uri in sources.list_inputs(path)]
        for info in inputs:
            is_csv = sources._format_of(info.uri, mapping.format) == "csv"
            batch_id = run.open(
                target=mapping.target,
                kind="file",
                uri=info.uri,
                content_hash=info.content_hash,
                size=info.size,
                header=info.header if is_csv else None,
            )
            if batch_id is None:
                continue
            chunks = sources.read_chunks(
                info.uri,
                file_format=info.mapping.format,
                encoding=info.mapping.encoding,
                delimiter=info.mapping.delimiter,
                chunk_size=chunk_size,
            )
            # Big inputs are prepared in a worker process, overlapping with the writes.
            workers = settings.prepare_workers if info.size > PARALLEL_FROM_BYTES else 0
            all_accepted &= run.write(batch_id, chunks, info.mapping, workers=workers)

    if len(summary["batch_ids"]) == 1:
        summary["batch_id"] = summary["batch_ids"][0]
    summary["seconds"] = round(time.monotonic() - started, 3)
    _publish(gates, "capture")
    if not all_accepted:
        return Failed(
            message=f"gate 'captured' rejected chunk(s) {', '.join(summary['rejected_chunks'])}; "
            "their records are quarantined",
            data=summary,
        )
    return Completed(message=_describe(summary), data=summary)


def _describe(summary: dict[str, Any]) -> str:
    return (
        f"received {summary['received']}, inserted {summary['inserted']}, merged "
        f"{summary['merged']}, quarantined {summary['quarantined']}"
    )


def _publish(gates: list[quality.GateResult], hop: str) -> None:
    """Data Docs for this run's validations and one table artifact with every chunk's gate."""
    if not gates:
        return
    quality.publish_docs(gates)
    create_table_artifact(
        key=f"dq-{hop}",
        table=quality.artifact_rows(gates),
        description=f"Data-quality gate results for the {hop} hop in this run",
    )
