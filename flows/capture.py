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

from leadflow import store
from leadflow.mapping import SourceMapping, load_mapping
from leadflow.settings import get_settings
from tasks import capture as capture_tasks
from tasks import events as events_tasks
from tasks import quality, sources

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


def _run_chunks(
    summary: dict[str, Any],
    gates: list[quality.GateResult],
    database_url: str,
    chunks: Iterable[capture_tasks.PreparedChunk],
    mapping: SourceMapping,
    now: datetime,
    cursor: tuple[str, str] | None = None,
) -> bool:
    """Write the prepared chunks of one batch; returns True when every chunk was accepted."""
    accepted = True
    for chunk in chunks:
        state = capture_tasks.capture_chunk(
            database_url, chunk, mapping, now, cursor, return_state=True
        )
        if state.is_completed():
            outcome = state.result()
            _add(summary, outcome)
            gates.append(outcome.gate)
            continue
        try:
            state.result()
        except quality.GateFailed as failure:
            accepted = False
            gates.append(failure.result)
            summary["rejected_chunks"].append(f"{chunk.batch_id}/{chunk.chunk_no}")
            summary["received"] += failure.result.evaluated
            summary["quarantined"] += failure.result.evaluated
    return accepted


def _run_event_chunks(
    summary: dict[str, Any],
    gates: list[quality.GateResult],
    database_url: str,
    batch_id: int,
    chunks: Iterable[Any],
    mapping: SourceMapping,
    source: str,
    now: datetime,
    max_quarantine_rate: float | None,
) -> bool:
    """Write the chunks of one batch of engagement events; True when all were accepted."""
    accepted = True
    for chunk in chunks:
        state = events_tasks.capture_events_chunk(
            database_url,
            batch_id,
            chunk,
            mapping,
            source,
            now,
            max_quarantine_rate,
            return_state=True,
        )
        try:
            counts = state.result()
        except quality.GateFailed as failure:
            accepted = False
            gates.append(failure.result)
            summary["rejected_chunks"].append(f"{batch_id}/{chunk.chunk_no}")
            summary["received"] += failure.result.evaluated
            summary["quarantined"] += failure.result.evaluated
            continue
        gates.append(counts.pop("gate"))
        for name, value in counts.items():
            summary[name] += value
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
    run_id = flow_run.get_id()
    summary = _empty_summary()
    gates: list[quality.GateResult] = []
    all_accepted = True

    if mapping.api is not None:
        token = api_token(mapping.api.token_block)
        with engine.connect() as conn:
            since = capture_tasks.load_cursor(conn, source)
        for page in sources.fetch_pages(path, mapping.api, token=token, since=since):
            if not page.records:
                continue  # nothing new since the cursor: not a delivery
            batch_id, earlier = capture_tasks.open_batch(
                engine,
                source=source,
                target=mapping.target,
                kind="api",
                uri=page.uri,
                content_hash=page.content_hash,
                size=len(page.body),
                header=None,
                mapping_version=version,
                flow_run_id=run_id,
            )
            summary["batch_ids"].append(batch_id)
            if earlier:
                summary["duplicates"].append(batch_id)
                continue
            chunk = sources.page_chunk(page)
            if mapping.target == "events":
                accepted = _run_event_chunks(
                    summary,
                    gates,
                    database_url,
                    batch_id,
                    [chunk],
                    mapping,
                    source,
                    now,
                    max_quarantine_rate,
                )
                all_accepted &= accepted
                capture_tasks.close_batch(
                    engine, batch_id, status="complete" if accepted else "failed"
                )
                continue
            value = sources.cursor_from(chunk.records, mapping.api.cursor_field)
            prepared = capture_tasks.prepare_chunk(
                chunk, mapping, source, now, batch_id, max_quarantine_rate
            )
            accepted = _run_chunks(
                summary,
                gates,
                database_url,
                [prepared],
                mapping,
                now,
                cursor=(source, value) if value else None,
            )
            all_accepted &= accepted
            capture_tasks.close_batch(engine, batch_id, status="complete" if accepted else "failed")
    else:
        # Check every input before writing anything: a missing column stops the run here.
        inputs = [inspect_input(uri, mapping) for uri in sources.list_inputs(path)]
        for info in inputs:
            batch_id, earlier = capture_tasks.open_batch(
                engine,
                source=source,
                target=mapping.target,
                kind="file",
                uri=info.uri,
                content_hash=info.content_hash,
                size=info.size,
                header=info.header
                if sources._format_of(info.uri, mapping.format) == "csv"
                else None,
                mapping_version=version,
                flow_run_id=run_id,
            )
            summary["batch_ids"].append(batch_id)
            if earlier:
                summary["duplicates"].append(batch_id)
                continue
            chunks = sources.read_chunks(
                info.uri,
                file_format=info.mapping.format,
                encoding=info.mapping.encoding,
                delimiter=info.mapping.delimiter,
                chunk_size=chunk_size,
            )
            if mapping.target == "events":
                accepted = _run_event_chunks(
                    summary,
                    gates,
                    database_url,
                    batch_id,
                    chunks,
                    info.mapping,
                    source,
                    now,
                    max_quarantine_rate,
                )
                all_accepted &= accepted
                capture_tasks.close_batch(
                    engine, batch_id, status="complete" if accepted else "failed"
                )
                continue
            # Big inputs are prepared in a worker process, overlapping with the writes.
            workers = settings.prepare_workers if info.size > PARALLEL_FROM_BYTES else 0
            prepared = capture_tasks.prepared_chunks(
                chunks,
                info.mapping,
                source,
                now,
                batch_id=batch_id,
                max_quarantine_rate=max_quarantine_rate,
                workers=workers,
            )
            accepted = _run_chunks(summary, gates, database_url, prepared, info.mapping, now)
            all_accepted &= accepted
            capture_tasks.close_batch(engine, batch_id, status="complete" if accepted else "failed")

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
