"""`leadflow` commands: database, audit, sample data, reference data, blocks, KPIs, claims, the demo."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from app.cli.common import (
    BLOCK_VARIABLES,
    DATABASE,
    EXIT_FAILED,
    EXIT_OK,
    HOPS,
    PREFECT,
    RULES,
    Command,
    dumps,
    emit,
    fail,
    run_flow,
    state_outcome,
    timestamp,
)


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


def _db_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("action", choices=["upgrade", "current"])


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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
    emit(args, report.as_dict(), _human_audit)
    return EXIT_OK if report.ok else EXIT_FAILED


def _audit_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--json", action="store_true")


def cmd_generate(args: argparse.Namespace) -> int:
    from app.generate import generate

    started = time.monotonic()
    written = generate(Path(args.out), leads=args.leads, seed=args.seed, now=args.now)
    data = {
        "out": str(args.out),
        "files": {k: str(v) for k, v in written.items()},
        "seconds": round(time.monotonic() - started, 3),
    }
    emit(args, data, lambda d: "wrote " + ", ".join(d["files"].values()), reads_database=False)
    return EXIT_OK


def _generate_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--leads", type=int, default=5000)
    command.add_argument("--seed", type=int, default=7)
    command.add_argument("--out", required=True)
    command.add_argument("--now", type=timestamp)
    command.add_argument("--json", action="store_true")


def cmd_load(args: argparse.Namespace) -> int:
    from leadflow import store
    from leadflow.routing import reference

    store.upgrade()
    if args.kind == "reps" and _routing_reps_csv(Path(args.path)):
        return _load_routing_reps(args)
    try:
        with store.get_engine().begin() as conn:
            counts = reference.load(conn, args.kind, Path(args.path))
    except reference.ReferenceError as exc:
        return fail(str(exc))
    emit(args, counts, lambda d: f"{args.kind}: inserted {d['inserted']}, updated {d['updated']}")
    return EXIT_OK


def _load_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("kind", choices=["reps", "accounts"])
    command.add_argument("path")
    command.add_argument(
        "--rules", help="reps in the routing format: the routing rules they are checked against"
    )
    command.add_argument("--json", action="store_true")


def _routing_reps_csv(path: Path) -> bool:
    """A reps CSV in the routing format (it has pools), rather than the reference one."""
    try:
        header = path.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return False
    return "pools" in [h.strip() for h in header.split(",")]


def _load_routing_reps(args: argparse.Namespace) -> int:
    """Validate routing reps against the routing rules' pools and store them; routing uses
    them with ``--reps FILE`` or ``LEADFLOW_REPS_FILE``."""
    from leadflow import store
    from leadflow.routing import store as routing_store
    from leadflow.settings import get_settings
    from tasks.routing import load_context

    context = load_context.fn(args.rules, args.path)
    with store.get_engine().begin() as conn:
        ids = routing_store.sync_reps(conn, context.rules, store.utcnow())
    data = {
        "reps": len(ids),
        "version": context.version,
        "rules": args.rules or str(get_settings().rules_dir / "routing.yaml"),
    }
    emit(
        args,
        data,
        lambda d: (
            f"reps: {d['reps']} valid against {d['rules']} "
            f"(routing version {d['version']}); route with --reps {args.path}"
        ),
    )
    return EXIT_OK


def cmd_blocks(args: argparse.Namespace) -> int:
    """Register leadflow's block types, or create its blocks from environment variables."""
    from blocks import registry

    if args.action == "register":
        data = {"registered": registry.register()}
    elif args.action == "rotate-secret":
        from blocks.site import rotate

        data = rotate(keep_days=args.keep_days)
    else:
        data = registry.init(overwrite=args.overwrite)
    emit(args, data, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()), reads_database=False)
    return EXIT_OK


def _blocks_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("action", choices=["register", "init", "rotate-secret"])
    command.add_argument(
        "--keep-days",
        type=float,
        default=30.0,
        help="rotate-secret: days the old link-signing secret still verifies (default 30; "
        "0 retires it at once). The block: LEADFLOW_SITE_BLOCK, default leadflow-site",
    )
    command.add_argument("--overwrite", action="store_true", help="replace blocks that exist")
    command.add_argument("--json", action="store_true")


def cmd_report(args: argparse.Namespace) -> int:
    from flows.report import report
    from leadflow.kpi.measures import markdown

    return run_flow(args, report, markdown)  # (charts: PNG files, named in --json)


def _report_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--now", type=timestamp)
    command.add_argument("--json", action="store_true")


def cmd_demo(args: argparse.Namespace) -> int:
    """`make run`: database, sample data, ingest, pipeline, audit, summary."""
    from app.demo import demo
    from tasks import rules_check

    rules_check.demo()  # every rules file the demo uses: a typo is one line, exit 2
    state = demo(leads=args.leads, seed=args.seed, return_state=True)
    data, code, message = state_outcome(state)
    if args.json:
        print(dumps(data))
    else:
        from app.demo import describe

        print(describe(data))
    if message:
        print(f"leadflow: {message}", file=sys.stderr)
    return code


def _demo_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--leads", type=int, default=5000)
    command.add_argument("--seed", type=int, default=7)
    command.add_argument("--json", action="store_true")


def _human_claims(data: dict[str, Any]) -> str:
    lines = [
        f"{c['hop']:<10} {c['held']:>8} leads  {'DEAD' if c['dead'] else 'live':<4}  "
        f"holder {c.get('holder') or '?'}  expires {c.get('expires_at') or '-'}  {c['token']}"
        for c in data["claims"]
    ]
    if not lines:
        lines = ["no leads are claimed"]
    if data.get("released") is not None:
        lines.append(f"released {data['released']} leads")
    return "\n".join(lines)


def cmd_claims(args: argparse.Namespace) -> int:
    """List the claims holding leads; ``--release`` frees those whose holder died."""
    from leadflow import queue, store
    from leadflow.settings import get_settings

    engine = store.get_engine(get_settings().database_url)
    released = None
    if args.release:
        with engine.begin() as conn:
            released = queue.release_dead(conn)
    if args.token:
        released = (released or 0) + queue.release(engine, args.token)
    with engine.connect() as conn:
        frame = queue.list_claims(conn)
    claims = [
        {k: (None if v is None or v != v else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]
    emit(args, {"claims": claims, "released": released}, _human_claims)
    return EXIT_OK


def _claims_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--release", action="store_true", help="free leads held by dead (expired) claims"
    )
    command.add_argument("--token", help="free this claim, live or not (its run is gone)")
    command.add_argument("--json", action="store_true")


COMMANDS = (
    Command("db", cmd_db, "database migrations", _db_arguments, DATABASE),
    Command(
        "audit",
        cmd_audit,
        "check that every received record is accounted for",
        _audit_arguments,
        DATABASE,
    ),
    Command(
        "generate",
        cmd_generate,
        "write realistic synthetic sample data",
        _generate_arguments,
        ("LEADFLOW_HOME",),
    ),
    Command(
        "load",
        cmd_load,
        "load reference data (reps, accounts) from CSV",
        _load_arguments,
        DATABASE + RULES,
    ),
    Command(
        "blocks",
        cmd_blocks,
        "register leadflow's block types; create blocks from env",
        _blocks_arguments,
        BLOCK_VARIABLES,
    ),
    Command(
        "report",
        cmd_report,
        "KPIs: funnel, speed to lead, sources, waiting work, velocity",
        _report_arguments,
        DATABASE + RULES + PREFECT,
    ),
    Command(
        "demo",
        cmd_demo,
        "the whole thing on sample data (what `make run` does)",
        _demo_arguments,
        DATABASE + RULES + HOPS + PREFECT,
    ),
    Command(
        "claims",
        cmd_claims,
        "list the claims holding leads; free those of dead runs",
        _claims_arguments,
        DATABASE,
    ),
)
