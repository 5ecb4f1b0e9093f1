"""What every ``leadflow`` command shares: exit codes, how a command is declared, running a
flow and printing its summary, one-line errors.

Exit codes: 0 done, 1 a gate or the audit failed, 2 bad input or config (the message names
the file, row or field), 3 done, but messages were left undelivered (failed for now, put
back, or dead: ``leadflow outbox list``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNDELIVERED = 0, 1, 2, 3


@dataclass(frozen=True)
class Command:
    """One ``leadflow NAME``: its handler, its one-line help, and the function that declares
    its arguments (written beside the handler)."""

    name: str
    handler: Callable[[argparse.Namespace], int]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


def quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def emit(
    args: argparse.Namespace, data: dict[str, Any], human: Callable[[dict[str, Any]], str]
) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, default=str, sort_keys=True))
    else:
        print(human(data))


def state_outcome(state: Any) -> tuple[dict[str, Any], int, str | None]:
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


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"leadflow: {message}", file=sys.stderr)
    return code


def flow_arguments(args: argparse.Namespace, flow_fn: Any) -> dict[str, Any]:
    """The flow's parameters that the command line has, by name: an option is named like
    the parameter it sets (``dest``), so no command re-types its flow's keyword list."""
    parameters = inspect.signature(getattr(flow_fn, "fn", flow_fn)).parameters
    return {name: getattr(args, name) for name in parameters if hasattr(args, name)}


def run_flow(
    args: argparse.Namespace,
    flow_fn: Callable[..., Any],
    human: Callable[[dict[str, Any]], str],
    refused_code: int | None = None,
    **overrides: Any,
) -> int:
    """Run a flow with the command's options as its parameters (``flow_arguments``, then
    ``overrides``); print its summary. ``refused_code``: the exit code, with the state's
    message as the one line printed, when the flow ends Failed on purpose (with data)."""
    from leadflow import progress, store

    store.upgrade()
    with progress.shown():
        state = flow_fn(return_state=True, **(flow_arguments(args, flow_fn) | overrides))
    data, code, message = state_outcome(state)
    if "error" in data:
        return fail(message or f"{getattr(flow_fn, 'name', 'flow')} failed", code)
    if refused_code is not None and code == EXIT_FAILED:
        return fail(message or f"{getattr(flow_fn, 'name', 'flow')} failed", refused_code)
    emit(args, data, human)
    if message:
        print(f"leadflow: {message}", file=sys.stderr)
    elif state.name != "Completed":  # completed, with a caveat (e.g. "Completed with pending")
        print(f"leadflow: {state.message}", file=sys.stderr)
    if code == EXIT_OK and (undelivered := undelivered_code(data.get("notifications"))):
        print(
            "leadflow: messages were left undelivered; they wait in the outbox "
            "(`leadflow outbox list`)",
            file=sys.stderr,
        )
        return undelivered
    return code


def provider_problem(spec: str | None) -> str | None:
    """A ``--provider`` that cannot work, in one line (checked before a flow starts)."""
    if not spec or spec == "none" or spec.startswith("block:"):
        return None
    if spec.startswith("file:"):
        path = Path(spec[5:])
        return None if path.is_file() else f"--provider {spec}: no such file {path}"
    return f"--provider {spec!r}: unknown provider; use none, file:PATH or block:NAME"


def scoring_rules_ok(spec: str | None) -> None:
    """Check a scoring rules file before a flow starts: a typo is one line, exit 2."""
    from leadflow.scoring.decide import rule_source

    rule_source(spec)


def delivery_line(sent: dict[str, Any]) -> str:
    """One line for a person about a sender's run (route, sla, nurture, outbox send)."""
    backlog = sent.get("backlog") or {}
    line = (
        f"sent {sent.get('sent', 0)}, failed {sent.get('failed', 0)} (retried), "
        f"dead {sent.get('dead', 0)}, put back {sent.get('deferred', 0)}"
    )
    if backlog:
        line += (
            f"; outbox: {backlog.get('due', 0)} due, {backlog.get('waiting', 0)} waiting to "
            f"retry, {backlog.get('dead', 0)} dead"
        )
        if backlog.get("sending"):
            line += f", {backlog['sending']} held by a sender (taken over when its lease ends)"
    if sent.get("breaker_opened"):
        line += f"; {', '.join(sent['breaker_opened'])} server failing, left for the next run"
    return line


def undelivered_code(sent: dict[str, Any] | None) -> int:
    """3 when a sender's run left messages it should have delivered: temporary failures, put
    back, or dead (other than nurture mail that bounced for good, which is the lead's)."""
    if not sent:
        return EXIT_OK
    needs_a_look = (
        sent.get("failed", 0)
        + sent.get("deferred", 0)
        + sent.get("dead", 0)
        - sent.get("bounced", 0)
    )
    return EXIT_UNDELIVERED if needs_a_look > 0 else EXIT_OK
