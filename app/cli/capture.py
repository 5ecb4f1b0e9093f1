"""`leadflow` commands: capture: ingest files, folders and APIs; work the quarantine."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.cli.common import (
    DATABASE,
    EXIT_FAILED,
    EXIT_OK,
    HOPS,
    PREFECT,
    RULES,
    Command,
    emit,
    fail,
    run_flow,
    timestamp,
)


def _human_ingest(data: dict[str, Any]) -> str:
    if data.get("message") and not data.get("batch_ids"):
        return str(data["message"])  # nothing to capture: "no new files in <folder> (...)"
    lines = [
        f"received {data.get('received', 0)}: inserted {data.get('inserted', 0)}, "
        f"merged {data.get('merged', 0)}, quarantined {data.get('quarantined', 0)}"
    ]
    if data.get("duplicates"):
        lines.append(f"already ingested (no-op): batch(es) {data['duplicates']}")
    if data.get("resumed"):
        lines.append(f"resumed interrupted batch(es) {data['resumed']} after their last chunk")
    for warning in data.get("warnings", []):
        print(f"leadflow: warning: {warning}", file=sys.stderr)
    if data.get("rejected_chunks"):
        lines.append(f"REJECTED by the gate: chunk(s) {data['rejected_chunks']}")
    if data.get("blanked"):
        blanked = ", ".join(f"{k} {v}" for k, v in sorted(data["blanked"].items()))
        lines.append(f"invalid optional values blanked (kept in attributes._invalid): {blanked}")
    if "batch_ids" in data:
        lines.append(f"batch id(s): {data['batch_ids']}  ({data.get('seconds', 0)} s)")
    return "\n".join(lines)


def cmd_ingest(args: argparse.Namespace) -> int:
    from leadflow.capture.rules import load_mapping
    from leadflow.config import ConfigError

    try:
        mapping, _ = load_mapping(args.mapping)
    except ConfigError as exc:
        return fail(str(exc))
    if args.target and args.target != mapping.target:
        mapping = mapping.model_copy(update={"target": args.target})
    if mapping.target == "activities":
        from leadflow.capture.activities import reject_policy

        try:
            reject_policy()  # decisions follow the SLA rules: a typo there stops here
        except ConfigError as exc:
            return fail(str(exc))
    if mapping.api is None:
        from leadflow.capture.run import check_inputs
        from leadflow.capture.sources import InputError

        # A typo'd column or a missing file is one clear line, before a flow starts.
        try:
            check_inputs(args.path, mapping)
        except InputError as exc:
            return fail(str(exc))
    from flows.capture import capture

    return run_flow(
        args,
        capture,
        _human_ingest,
        mapping_path=args.mapping,  # the option --mapping also names the file in messages
        target=args.target or mapping.target,
    )


def _ingest_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "path", help="file, folder, fsspec URL, or REST endpoint (with an `api:` mapping)"
    )
    command.add_argument("--source", required=True, help="source name recorded on every lead")
    command.add_argument(
        "--mapping", help="source mapping YAML (default: columns named like lead fields)"
    )
    command.add_argument(
        "--max-quarantine-rate", type=float, help="reject a chunk above this share (default 0.05)"
    )
    command.add_argument(
        "--target",
        choices=["leads", "events", "activities"],
        help="what the records are (default: the mapping's)",
    )
    command.add_argument("--now", type=timestamp, help="business time (default: now, UTC)")
    command.add_argument("--json", action="store_true")


def _human_quarantine(data: dict[str, Any]) -> str:
    if "released" in data:
        lines = [
            f"released {data['released']} of {data['selected']} held record(s): inserted "
            f"{data['inserted']}, merged {data['merged']}; still held {data['still_held']}"
        ]
        return "\n".join(lines + [f"refused by the gate: {r}" for r in data["refused"]])
    if "exported" in data:
        return f"wrote {data['exported']} record(s) as received to {data['out']}"
    reasons = ", ".join(f"{k} {v}" for k, v in data["by_reason"].items()) or "none"
    lines = [f"{data['held']} record(s) held; by reason: {reasons}"]
    for r in data["records"]:
        where = (
            f"batch {r['batch_id']} record {r['record_no']}"
            if r["batch_id"]
            else f"lead {r['lead_id']}"
        )
        lines.append(f"  #{r['id']} {r['hop']} {where}: {'; '.join(r['reasons'])}")
        lines.append(f"      {r['record']}")
    if data["held"] > len(data["records"]):
        lines.append(
            f"  ... {data['held'] - len(data['records'])} more (narrow with --batch/--reason)"
        )
    return "\n".join(lines)


def batch_list(value: str) -> tuple[int, ...]:
    """``--batch 23`` or ``--batch 23,24`` (what a gate's message suggests)."""
    try:
        batches = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        batches = ()
    if not batches:
        raise argparse.ArgumentTypeError(f"not a batch id or a comma list of them: {value!r}")
    return batches


def hop_names(conn: Any) -> list[str]:
    """The hops a quarantine row can name: capture, every hop declared, any found held."""
    from sqlalchemy import select

    from leadflow import tables as t
    from leadflow.nurture.hop import HOP as NURTURE
    from leadflow.order import hop_names as pipeline_hops
    from leadflow.recycle.hop import HOP as RECYCLE
    from leadflow.scoring.hop import RESCORE

    found = conn.execute(select(t.quarantine.c.hop).distinct()).scalars()
    declared = ["capture", *pipeline_hops(), RESCORE.name, NURTURE.name, RECYCLE.name]
    return list(dict.fromkeys([*declared, *sorted(found)]))


def cmd_quarantine(args: argparse.Namespace) -> int:
    """List, export or release quarantined records."""
    from leadflow import quarantine, store

    store.upgrade()
    engine = store.get_engine()
    batch = args.batch
    selection = quarantine.Selection(
        ids=tuple(getattr(args, "ids", None) or ()),
        batch_id=batch if isinstance(batch, int) else None,
        batch_ids=batch if isinstance(batch, tuple) else (),
        hop=getattr(args, "hop", None),
        reason=getattr(args, "reason", None),
    )
    if selection.hop is not None:
        with engine.connect() as conn:
            hops = hop_names(conn)
        if selection.hop not in hops:
            return fail(f"--hop {selection.hop!r}: no such hop; use one of {', '.join(hops)}")
    if args.action == "list":
        with engine.connect() as conn:
            data = quarantine.listing(conn, selection)
    elif args.action == "export":
        with engine.connect() as conn:
            data = {
                "exported": quarantine.export(conn, args.batch, Path(args.out)),
                "out": args.out,
            }
    else:
        if not (selection.ids or selection.batch_ids or selection.reason):
            return fail("say which records to release: IDs, --batch N or --reason R")
        from leadflow.capture.release import release_capture
        from leadflow.capture.rules import load_mapping

        mapping, version = load_mapping(args.mapping) if args.mapping else (None, "default")
        data = release_capture(
            engine,
            selection,
            now=datetime.now(UTC),
            mapping=mapping,
            mapping_version=version,
            max_quarantine_rate=args.max_quarantine_rate,
        )
    emit(args, data, _human_quarantine)
    return EXIT_FAILED if data.get("refused") else EXIT_OK


def _quarantine_arguments(command: argparse.ArgumentParser) -> None:
    actions = command.add_subparsers(dest="action", required=True)
    listed = actions.add_parser(
        "list", help="held records (emails, phones masked), counts by reason"
    )
    listed.add_argument("--batch", type=batch_list, help="a capture batch id, or a comma list")
    listed.add_argument("--hop", help="capture, enrich, score, route, ... (the hop that held it)")
    listed.add_argument("--reason", help="an expectation name, e.g. email_is_valid")
    listed.add_argument("--json", action="store_true")
    release = actions.add_parser("release", help="feed held capture records through the hop again")
    release.add_argument("ids", nargs="*", type=int, help="quarantine ids (from `list`)")
    release.add_argument("--batch", type=batch_list, help="a capture batch id, or a comma list")
    release.add_argument("--reason")
    release.add_argument("--mapping", help="the (fixed) mapping to read them with")
    release.add_argument("--max-quarantine-rate", type=float)
    release.add_argument("--json", action="store_true")
    exported = actions.add_parser("export", help="a batch's held records as received, to fix")
    exported.add_argument("--batch", type=int, required=True)
    exported.add_argument("--out", required=True)
    exported.add_argument("--json", action="store_true")


COMMANDS = (
    Command(
        "ingest",
        cmd_ingest,
        "capture leads (or engagement events, or sales activities) from a file, folder or REST API",
        _ingest_arguments,
        DATABASE + RULES + HOPS + ("LEADFLOW_PREPARE_WORKERS",) + PREFECT,
    ),
    Command(
        "quarantine",
        cmd_quarantine,
        "list, export or release quarantined records",
        _quarantine_arguments,
        (*DATABASE, "LEADFLOW_MAX_QUARANTINE_RATE"),
    ),
)
