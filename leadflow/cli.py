"""The ``leadflow`` command line.

Every command that runs a hop runs it as a Prefect flow (on Prefect's ephemeral API unless
``PREFECT_API_URL`` points at a server). ``--json`` prints one JSON document on stdout and
nothing else there; logs go to stderr. Exit codes: 0 done, 1 a gate or the audit failed,
2 bad input or config (the message names the file, row or field).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _emit(
    args: argparse.Namespace, data: dict[str, Any], human: Callable[[dict[str, Any]], str]
) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, default=str, sort_keys=True))
    else:
        print(human(data))


def _state_outcome(state: Any) -> tuple[dict[str, Any], int, str | None]:
    """(data, exit code, error message) from a flow's final state."""
    data = None
    try:
        data = state.result(raise_on_failure=False)
    except Exception:
        data = None
    if state.is_completed():
        return (data if isinstance(data, dict) else {}), EXIT_OK, None
    message = state.message or state.type.value
    if isinstance(data, dict):
        return data, EXIT_FAILED, message
    bad_input = any(
        name in message
        for name in ("MissingColumnsError", "InputError", "ConfigError", "IllegalTransition")
    )
    return {"error": message}, EXIT_BAD_INPUT if bad_input else EXIT_FAILED, message


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"leadflow: {message}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- commands


def cmd_db(args: argparse.Namespace) -> int:
    from leadflow import store
    from leadflow.settings import get_settings

    url = get_settings().database_url
    if args.action == "upgrade":
        revision = store.upgrade(url)
        print(f"database at revision {revision}: {_safe_url(url)}")
    else:
        print(store.current_revision(url) or "(empty)")
    return EXIT_OK


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _human_ingest(data: dict[str, Any]) -> str:
    lines = [
        f"received {data.get('received', 0)}: inserted {data.get('inserted', 0)}, "
        f"merged {data.get('merged', 0)}, quarantined {data.get('quarantined', 0)}"
    ]
    if data.get("duplicates"):
        lines.append(f"already ingested (no-op): batch(es) {data['duplicates']}")
    if data.get("rejected_chunks"):
        lines.append(f"REJECTED by the gate: chunk(s) {data['rejected_chunks']}")
    if data.get("blanked"):
        blanked = ", ".join(f"{k} {v}" for k, v in sorted(data["blanked"].items()))
        lines.append(f"invalid optional values blanked (kept in attributes._invalid): {blanked}")
    if "batch_ids" in data:
        lines.append(f"batch id(s): {data['batch_ids']}  ({data.get('seconds', 0)} s)")
    return "\n".join(lines)


def cmd_ingest(args: argparse.Namespace) -> int:
    from leadflow import store
    from leadflow.config import ConfigError
    from leadflow.mapping import load_mapping

    try:
        mapping, _ = load_mapping(args.mapping)
    except ConfigError as exc:
        return _fail(str(exc))
    store.upgrade()
    if mapping.target == "events":
        from flows.events import ingest_events as flow_fn
    else:
        from flows.capture import capture as flow_fn
    state = flow_fn(
        args.path,
        source=args.source,
        mapping_path=args.mapping,
        now=args.now,
        max_quarantine_rate=args.max_quarantine_rate,
        return_state=True,
    )
    data, code, message = _state_outcome(state)
    if "error" in data:
        return _fail(message or "ingest failed", code)
    _emit(args, data, _human_ingest)
    if message:
        print(f"leadflow: {message}", file=sys.stderr)
    return code


def _human_audit(data: dict[str, Any]) -> str:
    head = "ledger OK" if data["ok"] else "LEDGER BROKEN"
    lines = [
        f"{head}: {data['batches']} batches, received {data['received']} = inserted "
        f"{data['inserted']} + merged {data['merged']} + quarantined {data['quarantined']}; "
        f"{data['leads']} leads, {data['ledger_events']} ledger events"
    ]
    lines += [f"  problem: {p}" for p in data["problems"]]
    return "\n".join(lines)


def cmd_audit(args: argparse.Namespace) -> int:
    from leadflow import audit, store

    store.upgrade()
    with store.get_engine().connect() as conn:
        report = audit.run_audit(conn)
    _emit(args, report.as_dict(), _human_audit)
    return EXIT_OK if report.ok else EXIT_FAILED


def _human_run(data: dict[str, Any]) -> str:
    lines = []
    for hop, summary in data.get("hops", {}).items():
        shown = {k: v for k, v in summary.items() if not isinstance(v, dict | list)}
        lines.append(f"{hop}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    counts = data.get("status_counts", {})
    lines.append("leads by status: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none"))
    lines.append(f"({data.get('seconds', 0)} s)")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline
    from leadflow import store

    store.upgrade()
    state = pipeline(now=args.now, provider=args.provider, return_state=True)
    data, code, message = _state_outcome(state)
    _emit(args, data, _human_run)
    if message:
        print(f"leadflow: {message}", file=sys.stderr)
    return code


def _human_enrich(data: dict[str, Any]) -> str:
    lookups = data.get("lookups", {})
    return (
        f"enriched {data.get('enriched', 0)}, pending {data.get('pending', 0)}, quarantined "
        f"{data.get('quarantined', 0)} in {data.get('batches', 0)} batch(es)\n"
        f"accounts matched: {data.get('accounts_matched', 0)} (match rate {data.get('match_rate', 0):.1%}); "
        f"firmographics: {lookups.get('domains', 0)} domains, {lookups.get('cached', 0)} cached, "
        f"{lookups.get('calls', 0)} calls, found {lookups.get('found', 0)} "
        f"(match rate {data.get('firmographics_match_rate', 0):.1%})"
        + ("; PROVIDER CIRCUIT OPEN" if lookups.get("circuit_open") else "")
        + f"\n({data.get('seconds', 0)} s)"
    )


def cmd_enrich(args: argparse.Namespace) -> int:
    from flows.enrich import enrich
    from leadflow import store

    store.upgrade()
    state = enrich(now=args.now, provider=args.provider, return_state=True)
    data, code, message = _state_outcome(state)
    if "error" in data:
        return _fail(message or "enrich failed", code)
    _emit(args, data, _human_enrich)
    if message:
        print(f"leadflow: {message}", file=sys.stderr)
    elif state.name != "Completed":
        print(f"leadflow: {state.message}", file=sys.stderr)
    return code


def cmd_generate(args: argparse.Namespace) -> int:
    from leadflow.generate import generate

    started = time.monotonic()
    written = generate(Path(args.out), leads=args.leads, seed=args.seed, now=args.now)
    data = {
        "out": str(args.out),
        "files": {k: str(v) for k, v in written.items()},
        "seconds": round(time.monotonic() - started, 3),
    }
    _emit(args, data, lambda d: "wrote " + ", ".join(d["files"].values()))
    return EXIT_OK


def cmd_load(args: argparse.Namespace) -> int:
    from leadflow import reference, store

    store.upgrade()
    try:
        with store.get_engine().begin() as conn:
            counts = reference.load(conn, args.kind, Path(args.path))
    except reference.ReferenceError as exc:
        return _fail(str(exc))
    _emit(args, counts, lambda d: f"{args.kind}: inserted {d['inserted']}, updated {d['updated']}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """`make run`: database, sample data, ingest, pipeline, audit, summary."""
    from flows.demo import demo

    state = demo(leads=args.leads, seed=args.seed, return_state=True)
    data, code, message = _state_outcome(state)
    if args.json:
        print(json.dumps(data, default=str, sort_keys=True))
    else:
        from flows.demo import describe

        print(describe(data))
    if message:
        print(f"leadflow: {message}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leadflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        return command

    db = add("db", cmd_db, "database migrations")
    db.add_argument("action", choices=["upgrade", "current"])

    ingest = add(
        "ingest", cmd_ingest, "capture leads (or engagement events) from a file, folder or REST API"
    )
    ingest.add_argument(
        "path", help="file, folder, fsspec URL, or REST endpoint (with an `api:` mapping)"
    )
    ingest.add_argument("--source", required=True, help="source name recorded on every lead")
    ingest.add_argument(
        "--mapping", help="source mapping YAML (default: columns named like lead fields)"
    )
    ingest.add_argument(
        "--max-quarantine-rate", type=float, help="reject a chunk above this share (default 0.05)"
    )
    ingest.add_argument("--now", type=_timestamp, help="business time (default: now, UTC)")
    ingest.add_argument("--json", action="store_true")

    audit = add("audit", cmd_audit, "check that every received record is accounted for")
    audit.add_argument("--json", action="store_true")

    enrich = add("enrich", cmd_enrich, "run the enrichment hop alone on captured leads")
    enrich.add_argument(
        "--provider", help="none | file:PATH | block:NAME (default: rules/enrichment.yaml)"
    )
    enrich.add_argument("--now", type=_timestamp)
    enrich.add_argument("--json", action="store_true")

    run = add("run", cmd_run, "run the pipeline's hops on whatever is waiting")
    run.add_argument("--now", type=_timestamp)
    run.add_argument(
        "--provider", help="enrich hop's firmographics provider: none | file:PATH | block:NAME"
    )
    run.add_argument("--json", action="store_true")

    generate = add("generate", cmd_generate, "write realistic synthetic sample data")
    generate.add_argument("--leads", type=int, default=5000)
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument("--out", required=True)
    generate.add_argument("--now", type=_timestamp)
    generate.add_argument("--json", action="store_true")

    load = add("load", cmd_load, "load reference data (reps, accounts) from CSV")
    load.add_argument("kind", choices=["reps", "accounts"])
    load.add_argument("path")
    load.add_argument("--json", action="store_true")

    demo = add("demo", cmd_demo, "the whole thing on sample data (what `make run` does)")
    demo.add_argument("--leads", type=int, default=5000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_prefect()
    args = build_parser().parse_args(argv)
    from leadflow.config import ConfigError

    try:
        return args.handler(args)
    except ConfigError as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
