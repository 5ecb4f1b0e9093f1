"""Capture's Prefect layer: the tasks the capture flow runs (a chunk, a linked chunk, an
input inspected, an API token and cursor) and ``CaptureRun``, which submits them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from leadflow import progress, quality, store
from leadflow.capture import prepare, sources, write
from leadflow.capture import run as run_impl
from leadflow.capture import write as capture
from leadflow.capture.linked import LinkedKind, write_linked_chunk
from leadflow.capture.prepare import PreparedChunk
from leadflow.capture.rules import SourceMapping
from leadflow.capture.run import (
    LINKED,
    InputInfo,
    describe_rejection,
    empty_summary,
    never_empty,
)
from leadflow.capture.sources import RecordChunk
from leadflow.capture.write import ChunkOutcome, write_capture_chunk
from tasks.hops import announce_refusals


def not_a_gate_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient errors, never a gate's verdict."""
    try:
        state.result()
    except quality.GateFailed:
        return False
    except Exception:
        return True
    return False


@task(
    name="capture-chunk",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=not_a_gate_failure,
    task_run_name="capture-{chunk.batch_id}-chunk-{chunk.chunk_no}",
)
def capture_chunk(
    database_url: str,
    chunk: PreparedChunk,
    mapping: SourceMapping,
    now: datetime,
    cursor: tuple[str, str] | None = None,
) -> ChunkOutcome:
    """Merge and store one prepared chunk of records (one transaction)."""
    from prefect.runtime import flow_run

    outcome = write_capture_chunk(
        store.get_engine(database_url),
        chunk=chunk,
        mapping=mapping,
        now=now,
        flow_run_id=flow_run.get_id(),
        cursor=cursor,
    )
    log_outcome(outcome)
    return outcome


def log_outcome(outcome: ChunkOutcome) -> None:
    from prefect.logging import get_run_logger

    get_run_logger().info(
        "batch %s chunk %s: received %s, inserted %s, merged %s, quarantined %s",
        outcome.batch_id,
        outcome.chunk_no,
        outcome.received,
        outcome.inserted,
        outcome.merged,
        outcome.quarantined,
    )
    if outcome.effects:
        get_run_logger().info(
            "batch %s chunk %s: %s",
            outcome.batch_id,
            outcome.chunk_no,
            ", ".join(f"{name} {count}" for name, count in outcome.effects.items()),
        )


@task(name="inspect-input", cache_policy=NO_CACHE, task_run_name="inspect-{uri}")
def inspect_input(
    uri: str, mapping: SourceMapping, digest: tuple[str, int] | None = None
) -> InputInfo:
    """Hash the input (unless ``digest`` is known) and check its header against the
    mapping (nothing is written)."""
    return run_impl.inspect_input(uri, mapping, digest)


@task(name="api-token", cache_policy=NO_CACHE)
def api_token(block_name: str | None) -> str | None:
    """The API's bearer token from its Secret block (None when the API needs none)."""
    if not block_name:
        return None
    from prefect.blocks.system import Secret

    return Secret.load(block_name).get()


@task(name="load-cursor", cache_policy=NO_CACHE)
def source_cursor(database_url: str, source: str) -> str | None:
    """Where the source's API left off last time (None the first time)."""
    with store.get_engine(database_url).connect() as conn:
        return write.load_cursor(conn, source)


@task(
    name="capture-linked-chunk",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=not_a_gate_failure,
    task_run_name="{kind.target}-{batch_id}-chunk-{chunk.chunk_no}",
)
def capture_linked_chunk(
    kind: LinkedKind,
    database_url: str,
    batch_id: int,
    chunk: RecordChunk,
    mapping: SourceMapping,
    source: str,
    now: datetime,
    max_quarantine_rate: float | None = None,
    cursor: tuple[str, str] | None = None,
) -> capture.ChunkOutcome:
    """Gate and store one chunk of events or activities (one transaction)."""
    from prefect.runtime import flow_run

    outcome = write_linked_chunk(
        store.get_engine(database_url),
        kind,
        batch_id=batch_id,
        chunk=chunk,
        mapping=mapping,
        source=source,
        now=now,
        flow_run_id=flow_run.get_id(),
        max_quarantine_rate=max_quarantine_rate,
        cursor=cursor,
    )
    log_outcome(outcome)
    return outcome


@dataclass
class CaptureRun:
    """What every batch of one capture run shares, and its running summary."""

    database_url: str
    source: str
    now: datetime
    max_quarantine_rate: float | None
    version: str
    flow_run_id: str | None
    summary: dict[str, Any] = field(default_factory=empty_summary)
    gates: list[quality.GateResult] = field(default_factory=list)
    accepted: bool = True

    def open(self, **batch: Any) -> write.OpenedBatch | None:
        """Record a received input; None when identical content was already captured."""
        opened = write.open_batch(
            store.get_engine(self.database_url),
            source=self.source,
            mapping_version=self.version,
            flow_run_id=self.flow_run_id,
            **batch,
        )
        self.summary["batch_ids"].append(opened.batch_id)
        if opened.earlier:
            self.summary["duplicates"].append(opened.batch_id)
            return None
        if opened.resumed:
            self.summary.setdefault("resumed", []).append(opened.batch_id)
        return opened

    def new_files(self, uris: list[str], target: str) -> list[tuple[str, tuple[str, int]]]:
        """A drop folder's files not received before, each with its (SHA-256, size): a file
        still lying in the folder from an earlier tick is not a new delivery, so it opens no
        batch (not even a duplicate). The others' batches go under ``seen_before`` (and
        ``seen_rejected`` for those the gate rejected)."""
        fresh = []
        seen = self.summary.setdefault("seen_before", [])
        for uri in uris:
            digest = sources.content_hash(uri)
            with store.get_engine(self.database_url).connect() as conn:
                earlier = run_impl.received_before(
                    conn, source=self.source, target=target, content_hash=digest[0]
                )
            if earlier is None:
                fresh.append((uri, digest))
                continue
            seen.append(earlier[0])
            if earlier[1] == "failed":
                self.summary.setdefault("seen_rejected", []).append(earlier[0])
        return fresh

    def lock(self, target: str, content_hash: str) -> Any:
        """The input's lock, held from opening its batch to closing it."""
        return write.content_lock(
            store.get_engine(self.database_url),
            source=self.source,
            target=target,
            content_hash=content_hash,
            on_wait=say_waiting,
        )

    def write(
        self,
        batch_id: int,
        chunks: Iterable[RecordChunk],
        mapping: SourceMapping,
        *,
        workers: int = 0,
        cursor: tuple[str, str] | None = None,
        rejected_before: bool = False,
    ) -> bool:
        """Write one batch's chunks (leads, events or activities, as the mapping's target says) and
        close the batch; True when every chunk was accepted (``rejected_before``: a chunk
        an interrupted run committed was rejected)."""
        if mapping.target in LINKED:
            states = (
                (
                    chunk.chunk_no,
                    capture_linked_chunk(
                        LINKED[mapping.target],
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
            prepared = prepare.prepared_chunks(
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
                    capture_chunk(
                        self.database_url, chunk, mapping, self.now, cursor, return_state=True
                    ),
                )
                for chunk in prepared
            )
        accepted = not rejected_before
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
            self._add(outcome)
            progress.advance(f"capture: {mapping.target}", outcome.received)
            self.gates.append(outcome.gate)
            for name, count in outcome.effects.items():
                effects = self.summary.setdefault("effects", {})
                effects[name] = effects.get(name, 0) + count
        write.close_batch(
            store.get_engine(self.database_url),
            batch_id,
            status="complete" if accepted else "failed",
        )
        self.accepted &= accepted
        return accepted

    def _add(self, outcome: write.ChunkOutcome) -> None:
        for name, value in outcome.counts().items():
            self.summary[name] += value
        for name, count in outcome.blanked.items():
            self.summary["blanked"][name] = self.summary["blanked"].get(name, 0) + count

    def capture_api(self, url: str, mapping: SourceMapping) -> None:
        """Every page the API has past the source's cursor, one batch per page."""
        assert mapping.api is not None
        token = api_token(mapping.api.token_block)
        since = source_cursor(self.database_url, self.source)
        for page in sources.fetch_pages(url, mapping.api, token=token, since=since):
            if not page.records:
                continue  # nothing new since the cursor: not a delivery
            with self.lock(mapping.target, page.content_hash):
                opened = self.open(
                    target=mapping.target,
                    kind="api",
                    uri=page.uri,
                    content_hash=page.content_hash,
                    size=len(page.body),
                    header=None,
                )
                if opened is None:
                    continue
                chunk = sources.page_chunk(page)
                value = sources.cursor_from(chunk.records, mapping.api.cursor_field)
                self.write(
                    opened.batch_id,
                    write.skip_committed([chunk], opened.committed),
                    mapping,
                    cursor=(self.source, value) if value else None,
                    rejected_before=opened.rejected_before,
                )

    def capture_file(
        self, info: InputInfo, mapping: SourceMapping, *, chunk_size: int, workers: int
    ) -> None:
        """One checked input file (or object) as one batch, read in chunks."""
        is_csv = sources._format_of(info.uri, mapping.format) == "csv"
        if info.encoding_problem:
            self.summary.setdefault("warnings", []).append(info.encoding_problem)
        with self.lock(mapping.target, info.content_hash):
            opened = self.open(
                target=mapping.target,
                kind="file",
                uri=info.uri,
                content_hash=info.content_hash,
                size=info.size,
                header=info.header if is_csv else None,
            )
            if opened is None:
                return
            chunks = sources.read_chunks(
                info.uri,
                file_format=info.mapping.format,
                encoding=info.mapping.encoding,
                delimiter=info.mapping.delimiter,
                chunk_size=chunk_size,
            )
            chunks = never_empty(chunks, info.header)
            self.write(
                opened.batch_id,
                write.skip_committed(chunks, opened.committed),
                info.mapping,
                workers=workers,
                rejected_before=opened.rejected_before,
            )

    def describe(self) -> str:
        s = self.summary
        return (
            f"received {s['received']}, inserted {s['inserted']}, merged "
            f"{s['merged']}, quarantined {s['quarantined']}"
        )

    def rejection(self) -> str:
        """Why the gate rejected chunks: rates against the limit, the top reasons, and the
        option that changes the limit."""
        rejected = [g for g in self.gates if not g.success]
        return (
            f"gate 'captured' rejected chunk(s) {', '.join(self.summary['rejected_chunks'])}; "
            "their records are quarantined. "
            + "; ".join(describe_rejection(g) for g in rejected[:3])
            + ". Records: leadflow quarantine list --batch "
            + ",".join(str(b) for b in dict.fromkeys(self.summary["batch_ids"]))
        )


def publish_gates(gates: list[quality.GateResult], hop: str) -> None:
    """Data Docs for this run's validations and one table artifact with every chunk's gate;
    refusals announced to ops (``tasks.hops.announce_refusals``)."""
    if not gates:
        return
    announce_refusals(gates)
    quality.publish_docs(gates)
    create_table_artifact(
        key=f"dq-{hop}",
        table=quality.artifact_rows(gates),
        description=f"Data-quality gate results for the {hop} hop in this run",
    )


def say_waiting() -> None:
    """Tell whoever watches (the run's log, or the terminal) why nothing happens yet."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().info(write.WAITING)
    except MissingContextError:
        write.say_waiting()
