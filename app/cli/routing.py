"""`leadflow` commands: routing: route MQLs, or replay changed rules (dry run)."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import (
    DATABASE,
    HOPS,
    PREFECT,
    RULES,
    Command,
    delivery_line,
    fail,
    run_flow,
    timestamp,
)


def _human_route(data: dict[str, Any]) -> str:
    if "markdown" in data:
        return data["markdown"] + (
            f"\n\n{data['would_change_owner']} of {data['leads']} leads would change owner"
        )
    lines = [
        f"routed {data.get('routed', 0)}, waiting {data.get('waiting', 0)}, quarantined "
        f"{data.get('quarantined', 0)} (rules {data.get('version')}, {data.get('seconds', 0)} s)"
    ]
    for rep, count in (data.get("per_rep") or {}).items():
        lines.append(f"  {rep:<20} {count}")
    for pool, count in (data.get("waiting_per_pool") or {}).items():
        lines.append(f"  waiting in {pool}: {count} (pool full; routed as capacity frees)")
    sent = data.get("notifications") or {}
    lines.append(
        f"notifications: queued {data.get('queued', 0)}"
        + (
            f"; {delivery_line(sent)}"
            if sent
            else " (no notifier: set LEADFLOW_NOTIFIER=block:NAME to send)"
        )
    )
    return "\n".join(lines)


def cmd_route(args: argparse.Namespace) -> int:
    from tasks.routing import load_context

    load_context.fn(args.rules, args.reps)  # a typo is one line, exit 2, before any flow
    if args.dry_run:
        from flows.route import route_dry_run

        if not args.rules:
            return fail("route --dry-run needs --rules FILE (the changed rules to replay)")
        return run_flow(args, route_dry_run, _human_route)
    from flows.route import route

    return run_flow(args, route, _human_route)


def _route_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--rules", help="routing rules file (default rules/routing.yaml)")
    command.add_argument(
        "--reps", help="reps CSV replacing the rules' reps (or LEADFLOW_REPS_FILE)"
    )
    command.add_argument("--notifier", help="block:NAME[,block:NAME] (default LEADFLOW_NOTIFIER)")
    command.add_argument(
        "--dry-run", action="store_true", help="replay; show the diff; write nothing"
    )
    command.add_argument("--since", type=timestamp, help="dry run: MQLs routed since this time")
    command.add_argument("--now", type=timestamp)
    command.add_argument("--json", action="store_true")


COMMANDS = (
    Command(
        "route",
        cmd_route,
        "route MQLs to reps (or --dry-run a changed rules file)",
        _route_arguments,
        DATABASE + RULES + HOPS + ("LEADFLOW_NOTIFIER", "LEADFLOW_REPS_FILE") + PREFECT,
    ),
)
