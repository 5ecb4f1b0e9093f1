"""A capture run: its inputs checked, each received input opened as a batch, its chunks
written by the capture task (or the linked-records task for events and activities), the batch closed, and the run's summary.

The capture flow composes these; everything here that touches the store or a DataFrame
runs inside a task or a function the tasks share.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from leadflow import progress, quality, store
from leadflow.capture import activities, events, linked, prepare, sources, write
from leadflow.capture.rules import SourceMapping
from leadflow.capture.sources import RecordChunk
from tasks import capture as units

# What capture writes besides leads, by a mapping's ``target``: the linked kinds, named here.
LINKED = {kind.target: kind for kind in (events.EVENTS, activities.ACTIVITIES)}


@dataclass
class InputInfo:
    uri: str
    content_hash: str
    size: int
    header: list[str] | None
    mapping: SourceMapping
    encoding_problem: str | None = None  # the bytes are not all in the mapping's encoding


def check_header(uri: str, mapping: SourceMapping) -> tuple[list[str] | None, SourceMapping]:
    """The input's header (CSV) or keys (JSON Lines), and the mapping resolved against it.

    Raises ``sources.MissingColumnsError`` when a column the mapping names (and does not
    mark optional) is not there, naming it and the closest header names. Reads only the
    start of the input and writes nothing, so the CLI runs it before starting a flow.
    """
    kind = sources._format_of(uri, mapping.format)
    if kind == "csv":
        header = sources.read_header(uri, encoding=mapping.encoding, delimiter=mapping.delimiter)
    else:
        header = sources.peek_columns(uri, encoding=mapping.encoding)
    if header:
        mapping = mapping.resolve(header)
        expected = dict.fromkeys([*mapping.required_columns(), *mapping.expected_columns()])
        sources.check_columns(uri, header, tuple(expected))
    return header or None, mapping


def check_inputs(path: str, mapping: SourceMapping) -> list[str]:
    """Every input under ``path``, each checked by ``check_header`` and for holding at least
    one record (nothing is written): what the CLI refuses with exit 2 before a flow."""
    uris = sources.list_inputs(path)
    for uri in uris:
        _, resolved = check_header(uri, mapping)
        if not sources.has_records(
            uri,
            file_format=resolved.format,
            encoding=resolved.encoding,
            delimiter=resolved.delimiter,
        ):
            raise sources.InputError(
                f"{sources.safe_name(uri, 200, quote=False)}: no records "
                "(the file is empty or has only a header)"
            )
    return uris


def _never_empty(chunks: Iterable[RecordChunk], header: list[str] | None) -> Iterator[RecordChunk]:
    """The chunks, or one empty chunk when there are none: a 0-byte file is judged by the
    gate exactly like a header-only one."""
    empty = True
    for chunk in chunks:
        empty = False
        yield chunk
    if empty:
        yield sources.empty_chunk(header)


@task(name="inspect-input", cache_policy=NO_CACHE, task_run_name="inspect-{uri}")
def inspect_input(uri: str, mapping: SourceMapping) -> InputInfo:
    """Hash the input and check its header against the mapping (nothing is written)."""
    header, mapping = check_header(uri, mapping)
    digest, size = sources.content_hash(uri)
    problem = None
    if (offset := sources.undecodable_at(uri, mapping.encoding)) is not None:
        problem = (
            f"{sources.safe_name(uri.rsplit('/', 1)[-1], 80, quote=False)}: byte {offset} is not "
            f"valid {mapping.encoding} (the mapping's encoding); records with such bytes are "
            "quarantined: set `encoding:` in the mapping (e.g. cp1252) and ingest again"
        )
    return InputInfo(
        uri=uri,
        content_hash=digest,
        size=size,
        header=header,
        mapping=mapping,
        encoding_problem=problem,
    )


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


def empty_summary() -> dict[str, Any]:
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

    def lock(self, target: str, content_hash: str) -> Any:
        """The input's lock, held from opening its batch to closing it."""
        return write.content_lock(
            store.get_engine(self.database_url),
            source=self.source,
            target=target,
            content_hash=content_hash,
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
                    linked.capture_linked_chunk(
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
                    units.capture_chunk(
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
            chunks = _never_empty(chunks, info.header)
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


def describe_rejection(gate: quality.GateResult) -> str:
    """One rejected chunk in a sentence: quarantine rate and limit, top three reasons with
    counts, other failed batch checks, and the option that changes the limit."""
    rows = sorted(
        (c for c in gate.checks if c["level"] == "row" and c.get("unexpected")),
        key=lambda c: -c["unexpected"],
    )
    reasons = ", ".join(f"{c['name']} {c['unexpected']}" for c in rows[:3]) or "none"
    limit_check = next(
        (c for c in gate.checks if c["name"] == "quarantine_rate_within_limit"), None
    )
    others = [
        c["name"]
        for c in gate.checks
        if c["level"] == "batch" and not c["success"] and c is not limit_check
    ]
    text = f"{gate.batch_ref}: {gate.quarantined} of {gate.evaluated} records failed row checks"
    if limit_check is not None:
        text += (
            f" ({gate.quarantine_rate:.1%}, limit {limit_check['limit']:.1%}: "
            "change it with --max-quarantine-rate or LEADFLOW_MAX_QUARANTINE_RATE)"
        )
    text += f"; top reasons: {reasons}"
    if others:
        text += f"; failed batch checks: {', '.join(others)}"
    return text


def publish_gates(gates: list[quality.GateResult], hop: str) -> None:
    """Data Docs for this run's validations and one table artifact with every chunk's gate."""
    if not gates:
        return
    quality.publish_docs(gates)
    create_table_artifact(
        key=f"dq-{hop}",
        table=quality.artifact_rows(gates),
        description=f"Data-quality gate results for the {hop} hop in this run",
    )
