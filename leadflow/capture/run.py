"""A capture run: its inputs checked, each received input opened as a batch, its chunks
written by the capture task (or the linked-records task for events and activities), the batch closed, and the run's summary.

The capture flow composes these; everything here that touches the store or a DataFrame
runs inside a task or a function the tasks share.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from leadflow import quality
from leadflow import tables as t
from leadflow.capture import activities, events, sources
from leadflow.capture.rules import SourceMapping
from leadflow.capture.sources import RecordChunk

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


def never_empty(chunks: Iterable[RecordChunk], header: list[str] | None) -> Iterator[RecordChunk]:
    """The chunks, or one empty chunk when there are none: a 0-byte file is judged by the
    gate exactly like a header-only one."""
    empty = True
    for chunk in chunks:
        empty = False
        yield chunk
    if empty:
        yield sources.empty_chunk(header)


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


def inspect_input(
    uri: str, mapping: SourceMapping, digest: tuple[str, int] | None = None
) -> InputInfo:
    """Hash the input (unless ``digest``, its SHA-256 and size, is known) and check its
    header against the mapping (nothing is written)."""
    header, mapping = check_header(uri, mapping)
    digest, size = digest or sources.content_hash(uri)
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


# ------------------------------------------------------------------ drop folders
# A scheduled capture reads a drop folder (``var/inbox/<kind>``): a folder that is missing or
# holds nothing new is a quiet tick, not a failure, and a file still lying there from an
# earlier tick is not delivered again.


def drop_folder_path(path: str, home: Path) -> str:
    """A drop folder as a deployment names it: a relative local path is under the data
    folder (``LEADFLOW_HOME``), wherever the worker runs; a URL or absolute path as is."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str(home / path)


def received_before(
    conn: Connection, *, source: str, target: str, content_hash: str
) -> tuple[int, str] | None:
    """The batch that took this content in already, and its status: ``complete``, or
    ``failed`` (the gate rejected it; its records wait in the quarantine). A batch left
    ``running`` by a dead run is not one: the next run finishes it."""
    b = t.capture_batches
    row = conn.execute(
        select(b.c.id, b.c.status)
        .where(
            b.c.source == source,
            b.c.target == target,
            b.c.content_hash == content_hash,
            b.c.status.in_(("complete", "failed")),
        )
        .order_by(b.c.id)
        .limit(1)
    ).first()
    return (int(row.id), str(row.status)) if row is not None else None


def nothing_new(
    folder: str, *, missing: bool, seen: int = 0, rejected: list[int] | None = None
) -> str:
    """The one line a run that found nothing to capture in ``folder`` ends with."""
    if missing:
        return (
            f"no new files in {folder}: the folder does not exist yet "
            "(`leadflow setup` creates the drop folders)"
        )
    if not seen:
        return f"no new files in {folder} (it is empty)"
    line = f"no new files in {folder} ({seen} file(s) there were captured before"
    if rejected:
        batches = ",".join(str(b) for b in rejected)
        line += (
            f"; batch(es) {batches} rejected by the gate: `leadflow quarantine list --batch "
            f"{rejected[0]}`"
        )
    return line + ")"
