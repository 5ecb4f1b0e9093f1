"""`leadflow doctor`: check a deployment end to end, one line per check with the fix."""

from __future__ import annotations

import argparse

from app.cli.common import DATABASE, EXIT_FAILED, EXIT_OK, RULES, Command, dumps


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print one line per check (``ok``, ``FAIL`` with its fix, or ``skip``); exit 1 if
    any check failed. ``--json``: a list of {check, ok, detail, fix, skipped}."""
    from app.doctor import examine

    findings = examine(timeout=args.timeout, pool=args.pool)
    if args.json:
        print(dumps([f.as_dict() for f in findings]))
    else:
        print("\n".join(f.line() for f in findings))
    return EXIT_FAILED if any(not f.ok for f in findings) else EXIT_OK


def _positive(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {value!r}")
    return seconds


def _doctor_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--timeout",
        type=_positive,
        default=5.0,
        help="seconds each request may take (default 5; checks making several get a few times it)",
    )
    command.add_argument("--pool", default="leadflow", help="the work pool (default leadflow)")
    command.add_argument("--json", action="store_true")


COMMANDS = (
    Command(
        "doctor",
        cmd_doctor,
        "check a deployment: database, blocks, rules, SMTP, URL, workers, lane, ledger",
        _doctor_arguments,
        environment=(
            *DATABASE,
            "PREFECT_API_URL",
            *RULES,
            "LEADFLOW_NOTIFIER",
            "LEADFLOW_PUBLIC_URL",
            "LEADFLOW_CLAIM_TTL_SECONDS",
        ),
    ),
)
