"""Capture flow: read a file, a folder or a REST API; gate and store leads chunk by chunk.

Each received input (file or API page) is one batch; re-receiving identical content is a
no-op. A chunk the gate rejects is quarantined whole and makes the run Failed, after the
other chunks have been processed. The work itself is in ``tasks/capture/``.

A scheduled run reads a drop folder (``drop_folder=True``, as prefect.yaml's capture
deployments do): a missing folder, an empty one, or one whose files were all received before
is a Completed run saying "no new files in <folder>"; a person's missing file stays an error.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from leadflow.capture import sources
from leadflow.capture.rules import SourceMapping, load_mapping
from leadflow.capture.run import drop_folder_path, empty_summary, nothing_new
from leadflow.settings import get_settings
from tasks import rules_check
from tasks.capture import CaptureRun, inspect_input, publish_gates

PARALLEL_FROM_BYTES = 8 << 20  # smaller inputs are not worth a worker process's start-up


def run_name() -> str:
    """``capture-webinar-leads.csv``: the input's name (a folder's, or an API's path)."""
    parameters = flow_run.parameters or {}
    path = str(parameters.get("path") or parameters.get("source") or "input").rstrip("/")
    name = path.rsplit("/", 1)[-1].split("?", 1)[0] or path
    return f"capture-{name}"


@flow(name="capture", flow_run_name=run_name, log_prints=False)
def capture(
    path: str,
    source: str,
    mapping_path: str | None = None,
    now: datetime | None = None,
    max_quarantine_rate: float | None = None,
    database_url: str | None = None,
    chunk_size: int | None = None,
    target: str | None = None,
    drop_folder: bool = False,
) -> State:
    """Ingest leads (or, with ``target="events"`` or ``"activities"``, engagement events or
    sales activities) from a CSV/JSON Lines file or folder (local or fsspec URL) or a REST API.

    Returns a Completed state whose data is the summary (received, inserted, merged,
    quarantined, batch ids); Failed, with the same data, if any chunk was rejected.

    ``drop_folder``: ``path`` is a drop folder read on a schedule (relative: under
    ``LEADFLOW_HOME``). Missing, empty, or holding only files received before (which open no
    batch) is a Completed run whose message is "no new files in <folder>"; otherwise a
    missing ``path`` fails the run (InputError).
    """
    started = time.monotonic()
    settings = get_settings()
    # The mapping and, for activities, the SLA rules (what a reject does), before anything.
    if refused := rules_check.refusal(rules_check.capture, mapping_path, target):
        return Failed(message=refused.message, data=empty_summary())
    mapping, version = load_mapping(mapping_path)
    if target is not None and target != mapping.target:
        mapping = mapping.model_copy(update={"target": target})
    run = CaptureRun(
        database_url=database_url or settings.database_url,
        source=source or mapping.source or "unknown",
        now=now or datetime.now(UTC),
        max_quarantine_rate=max_quarantine_rate,
        version=version,
        flow_run_id=flow_run.get_id(),
    )
    if mapping.api is not None:
        run.capture_api(path, mapping)
    else:
        folder = drop_folder_path(path, settings.home) if drop_folder else path
        if drop_folder and not sources.input_exists(folder):
            return quiet_tick(run, folder, started, missing=True)
        uris = sources.list_inputs(folder)
        if drop_folder:
            uris = [u for u in uris if not sources.in_rejected(u, folder)]
        found = run.new_files(uris, mapping.target) if drop_folder else [(u, None) for u in uris]
        if not found:
            return quiet_tick(run, folder, started, missing=False)
        capture_files(
            run,
            found,
            mapping,
            chunk_size or settings.batch_size,
            settings.prepare_workers,
            set_aside_in=folder if drop_folder else None,
        )

    summary = run.summary
    if len(summary["batch_ids"]) == 1:
        summary["batch_id"] = summary["batch_ids"][0]
    summary["seconds"] = round(time.monotonic() - started, 3)
    publish_gates(run.gates, "capture")
    if not run.accepted:
        return Failed(message=run.rejection(), data=summary)
    if set_aside := summary.get("set_aside"):
        first = set_aside[0]
        return Failed(
            message=f"{len(set_aside)} file(s) set aside in {first['to'].rsplit('/', 1)[0]} "
            f"(the others captured: {run.describe()}): {first['reason']}",
            data=summary,
        )
    return Completed(message=run.describe(), data=summary)


def capture_files(
    run: CaptureRun,
    found: list[tuple[str, tuple[str, int] | None]],
    mapping: SourceMapping,
    chunk_size: int,
    prepare_workers: int,
    set_aside_in: str | None = None,
) -> None:
    """Each input (with its SHA-256 and size when known) as one batch.

    Every input is checked before anything is written. A person's file that fails the check
    stops the run there (one line, exit 2). In a drop folder (``set_aside_in``) such a file
    is moved to its ``rejected/`` subfolder with the reason beside it, the run goes on with
    the others and ends Failed naming it: red once, not at every tick."""
    inputs = []
    for uri, digest in found:
        try:
            inputs.append(inspect_input(uri, mapping, digest))
        except sources.InputError as exc:
            if set_aside_in is None:
                raise
            moved = sources.set_aside(uri, set_aside_in, str(exc))
            run.summary.setdefault("set_aside", []).append(
                {"file": uri, "to": moved, "reason": str(exc)}
            )
    for info in inputs:
        # Big inputs are prepared in a worker process, overlapping with the writes.
        workers = prepare_workers if info.size > PARALLEL_FROM_BYTES else 0
        run.capture_file(info, mapping, chunk_size=chunk_size, workers=workers)


def quiet_tick(run: CaptureRun, folder: str, started: float, *, missing: bool) -> State:
    """Nothing to capture in ``folder``: a Completed run that says so (no batch opened)."""
    summary = run.summary
    summary["message"] = nothing_new(
        folder,
        missing=missing,
        seen=len(summary.get("seen_before", [])),
        rejected=summary.get("seen_rejected"),
    )
    summary["seconds"] = round(time.monotonic() - started, 3)
    return Completed(message=summary["message"], data=summary)
