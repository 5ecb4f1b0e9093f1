"""`leadflow automations`: the Prefect automations that tell ops (``app/automations.py``)."""

from __future__ import annotations

import argparse

from app.cli.common import EXIT_OK, Command, emit, fail

ENVIRONMENT = {
    "PREFECT_API_URL": "the Prefect server the automations live on (required)",
    "LEADFLOW_OPS_BLOCK": "notification block to send through (default leadflow-ops)",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": (
        "seconds between flow run heartbeats, as on the workers (default 180, at least 30)"
    ),
}


def cmd_automations(args: argparse.Namespace) -> int:
    from app import automations
    from blocks import registry

    if not registry.api_url():
        return fail(
            "automations live on a Prefect server: set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api after `prefect server start`)"
        )
    if args.action == "list":
        listed = automations.list_automations()
        emit(args, {"automations": listed}, _listed)
        return EXIT_OK
    try:
        lines = automations.create_automations(
            block=args.block,
            heartbeat_seconds=args.heartbeat_seconds,
            missed_heartbeats=args.missed_heartbeats,
        )
    except ValueError as exc:  # the named block cannot notify
        return fail(f"{exc}; name a notification block in LEADFLOW_OPS_BLOCK or --block")
    emit(args, {"applied": lines}, lambda data: "\n".join(data["applied"]))
    return EXIT_OK


def _listed(data: dict) -> str:
    rows = data["automations"]
    if not rows:
        return "no leadflow automations on this server: `leadflow automations apply` makes them"
    return "\n".join(
        f"{row['name']} ({'on' if row['enabled'] else 'off'}; {', '.join(row['actions'])}): "
        f"{' '.join(row['trigger'].split())}"
        for row in rows
    )


def _arguments(command: argparse.ArgumentParser) -> None:
    actions = command.add_subparsers(dest="action", required=True)
    apply = actions.add_parser(
        "apply", help="create or update them in place; remove those no longer wanted"
    )
    apply.add_argument("--block", help="notification block (default $LEADFLOW_OPS_BLOCK)")
    apply.add_argument(
        "--heartbeat-seconds",
        type=int,
        help="the workers' heartbeat period (default $PREFECT_FLOWS_HEARTBEAT_FREQUENCY)",
    )
    apply.add_argument(
        "--missed-heartbeats",
        type=float,
        default=3.0,
        help="heartbeat periods without one before a Running run is Crashed (default 3)",
    )
    listed = actions.add_parser("list", help="leadflow's automations on the server")
    for action in (apply, listed):
        action.add_argument("--json", action="store_true")


COMMANDS = (
    Command(
        "automations",
        cmd_automations,
        "Prefect automations that tell ops: apply, list",
        _arguments,
        ENVIRONMENT,
    ),
)
