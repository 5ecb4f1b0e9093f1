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
import logging
import math
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
    # The variables it reads, which ``--help`` lists: names described in ``VARIABLES``, or
    # a dict of name -> description of its own.
    environment: tuple[str, ...] | dict[str, str] = ()


# What a command may read from the environment, as ``--help`` explains it; commands name
# theirs in ``Command.environment`` (the groups below are the usual sets).
VARIABLES = {
    "LEADFLOW_HOME": "folder holding var/ (the demo database, drop folders, reports)",
    "LEADFLOW_DATABASE_URL": "SQLAlchemy URL of the database (wins over the block)",
    "LEADFLOW_DATABASE_BLOCK": "name of a Leadflow Database block holding the URL",
    "LEADFLOW_RULES_DIR": "folder of rules files (default: the bundled rules/)",
    "LEADFLOW_RULES_BLOCK": "name of a Leadflow Rules Location block naming that folder",
    "LEADFLOW_BATCH_SIZE": "leads per hop batch (default 100000)",
    "LEADFLOW_MAX_QUARANTINE_RATE": "share of a batch the gate may quarantine (default 0.05)",
    "LEADFLOW_CLAIM_TTL_SECONDS": "how long a claim lives without renewal (default 60)",
    "LEADFLOW_PREPARE_WORKERS": "processes preparing capture chunks (default: the cores)",
    "LEADFLOW_NOTIFIER": "where messages go: block:NAME[,block:NAME] or maildir:PATH",
    "LEADFLOW_REPS_FILE": "reps CSV replacing the routing rules' reps",
    "LEADFLOW_CAPTURE_TOKEN": "token POST /leads checks when no Secret block is used",
    "LEADFLOW_PUBLIC_URL": "base URL of `leadflow serve` that links in emails point at",
    "LEADFLOW_PROGRESS": "1 shows progress bars when stderr is not a terminal, 0 hides them",
    "PREFECT_API_URL": "Prefect server (unset: a temporary local one for this command)",
}
DATABASE = ("LEADFLOW_DATABASE_URL", "LEADFLOW_DATABASE_BLOCK", "LEADFLOW_HOME")
RULES = ("LEADFLOW_RULES_DIR", "LEADFLOW_RULES_BLOCK")
HOPS = ("LEADFLOW_BATCH_SIZE", "LEADFLOW_MAX_QUARANTINE_RATE", "LEADFLOW_CLAIM_TTL_SECONDS")
PREFECT = ("PREFECT_API_URL", "LEADFLOW_PROGRESS")


# `leadflow blocks init`: each variable and the block it goes into (blocks/registry.py).
BLOCK_VARIABLES = {
    "PREFECT_API_URL": "the Prefect server the blocks are saved on",
    "LEADFLOW_DATABASE_URL": "block leadflow (Leadflow Database): the database URL",
    "LEADFLOW_CAPTURE_TOKEN": "block leadflow-capture-token (Secret): POST /leads token",
    "LEADFLOW_SMTP_HOST": "block leadflow-smtp (Leadflow SMTP Notifier): server host",
    "LEADFLOW_SMTP_PORT": "  leadflow-smtp: port (default 587; 465 with LEADFLOW_SMTP_SSL)",
    "LEADFLOW_SMTP_USERNAME": "  leadflow-smtp: login user",
    "LEADFLOW_SMTP_PASSWORD": "  leadflow-smtp: login password",
    "LEADFLOW_SMTP_FROM": "  leadflow-smtp: From address (default leadflow@HOST)",
    "LEADFLOW_SMTP_STARTTLS": "  leadflow-smtp: true|false, STARTTLS (default true unless SSL)",
    "LEADFLOW_SMTP_SSL": "  leadflow-smtp: true|false, TLS from the start (port 465)",
    "LEADFLOW_SMTP_CA_FILE": "  leadflow-smtp: CA file to trust (a private CA)",
    "LEADFLOW_PUBLIC_URL": "block leadflow-site (Leadflow Public Site): base URL of links",
    "LEADFLOW_UNSUBSCRIBE_SECRET": "  leadflow-site: link signing secret (random when unset)",
    "LEADFLOW_WEBHOOK_URL": "block leadflow-webhook (Leadflow Webhook Notifier): URL",
    "LEADFLOW_WEBHOOK_TOKEN": "  leadflow-webhook: bearer token",
    "LEADFLOW_FIRMOGRAPHICS_URL": "block leadflow-firmographics (Leadflow HTTP Firmographics)",
    "LEADFLOW_FIRMOGRAPHICS_KEY": "  leadflow-firmographics: API key",
    "LEADFLOW_RULES_DIR": "block leadflow-rules (Leadflow Rules Location): rules folder",
    "LEADFLOW_OPS_WEBHOOK_URL": "block leadflow-ops (Custom Webhook): where ops alerts go",
    "LEADFLOW_OPS_WEBHOOK_TOKEN": "  leadflow-ops: bearer token",
    "LEADFLOW_HUBSPOT_TOKEN": "block leadflow-hubspot (Leadflow HubSpot): private app token",
    "LEADFLOW_HUBSPOT_URL": "  leadflow-hubspot: API base URL (default https://api.hubapi.com)",
    "LEADFLOW_HUBSPOT_CALLS_PER_10S": "  leadflow-hubspot: the account's limit (default 100)",
    "LEADFLOW_SALESFORCE_CLIENT_ID": "block leadflow-salesforce (Leadflow Salesforce): app id",
    "LEADFLOW_SALESFORCE_CLIENT_SECRET": "  leadflow-salesforce: connected app secret",
    "LEADFLOW_SALESFORCE_LOGIN_URL": "  leadflow-salesforce: login URL (login.salesforce.com)",
    "LEADFLOW_SALESFORCE_USERNAME": "  leadflow-salesforce: user (username-password flow)",
    "LEADFLOW_SALESFORCE_PASSWORD": "  leadflow-salesforce: that user's password",
    "LEADFLOW_SALESFORCE_CA_FILE": "  leadflow-salesforce: CA file to trust (a private CA)",
    "LEADFLOW_SALESFORCE_API_VERSION": "  leadflow-salesforce: REST API version (default 60.0)",
    "LEADFLOW_CALDAV_URL": "block leadflow-caldav (Leadflow CalDAV Calendars): server URL",
    "LEADFLOW_CALDAV_USERNAME": "  leadflow-caldav: login user (reads and writes reps' calendars)",
    "LEADFLOW_CALDAV_PASSWORD": "  leadflow-caldav: that user's password",
    "LEADFLOW_CALDAV_CALENDARS": "  leadflow-caldav: rep=calendar URL or path, comma-separated",
    "LEADFLOW_CALDAV_TIMEOUT_SECONDS": "  leadflow-caldav: per request (default 5)",
    "LEADFLOW_CALDAV_CACHE_SECONDS": "  leadflow-caldav: busy times reused this long (default 60)",
}


def environment_epilog(names: tuple[str, ...] | dict[str, str]) -> str:
    """The ``--help`` epilog listing ``names`` (described in ``VARIABLES``, or by ``names``
    itself when it is a dict)."""
    described = VARIABLES | (names if isinstance(names, dict) else {})
    width = max(len(name) for name in names)
    lines = [f"  {name:<{width}}  {described.get(name, '')}".rstrip() for name in names]
    return "environment:\n" + "\n".join(lines)


def quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # Prefect's note that it starts (and stops) a temporary API for this command: noise
    # around a one-line result or error. Only those two records of the "prefect" logger go.
    logging.getLogger("prefect").addFilter(_not_temporary_server)


def _not_temporary_server(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(
        ("Starting temporary server", "Stopping temporary server")
    )


def strict(value: Any) -> Any:
    """``value`` fit for strict JSON: NaN, infinities and pandas' NA/NaT become None, numpy
    scalars plain numbers, tuples and sets lists, anything else unknown its ``str``."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [strict(v) for v in value]
    import numpy as np
    import pandas as pd

    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    if value is pd.NA or value is pd.NaT or (isinstance(value, np.datetime64) and np.isnat(value)):
        return None
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return strict(value.item())
    return str(value)


def dumps(data: Any) -> str:
    """Strict JSON (never NaN or Infinity: jq and every strict parser refuse them)."""
    return json.dumps(strict(data), sort_keys=True, allow_nan=False)


def timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def database_keys() -> dict[str, str]:
    """Which database a command read, for its ``--json``: ``database`` (host/db or the
    SQLite path, never a password) and ``database_source`` (the variable or block it came
    from, see ``leadflow.settings``)."""
    from leadflow.settings import database_label, get_settings

    settings = get_settings()
    return {
        "database": database_label(settings.database_url),
        "database_source": settings.database_source,
    }


def emit(
    args: argparse.Namespace,
    data: dict[str, Any],
    human: Callable[[dict[str, Any]], str],
    *,
    reads_database: bool = True,
) -> None:
    """Print a command's result: ``--json`` (with ``database_keys()`` unless the command
    reads no database), else ``human(data)``."""
    if getattr(args, "json", False):
        if reads_database:
            data = database_keys() | data
        print(dumps(data))
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
    bad_input = next((name for name in BAD_INPUT if f"{name}:" in message), None)
    if bad_input:  # the exception's own message, not Prefect's wrapping of it
        message = message.split(f"{bad_input}:", 1)[1].strip()
    return {"error": message}, EXIT_BAD_INPUT if bad_input else EXIT_FAILED, message


# Exceptions that mean bad input or configuration: a flow failing with one is exit 2.
BAD_INPUT = (
    "MissingColumnsError",
    "InputError",
    "ConfigError",
    "IllegalTransition",
    "MissingBlock",
)


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
    blocks_ok(args, flow_fn)
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


def blocks_ok(args: argparse.Namespace, flow_fn: Any) -> None:
    """Load the blocks a flow will read before it starts, so a missing one is one line and
    exit 2 (``MissingBlock``), not a failed run: the rules folder's block, and the notifier
    (``--notifier`` or ``LEADFLOW_NOTIFIER``) of a flow that sends."""
    from leadflow.settings import get_settings

    get_settings().rules_dir  # noqa: B018 (reads LEADFLOW_RULES_BLOCK's block, if any)
    parameters = inspect.signature(getattr(flow_fn, "fn", flow_fn)).parameters
    if "notifier" in parameters:
        spec = getattr(args, "notifier", None) or os.environ.get("LEADFLOW_NOTIFIER")
        if spec:
            from tasks.outbox import resolve_notifiers

            resolve_notifiers(spec)


def provider_problem(spec: str | None) -> str | None:
    """A ``--provider`` that cannot work, in one line (checked before a flow starts)."""
    if not spec or spec == "none":
        return None
    if spec.startswith("block:"):
        from blocks import resolve
        from leadflow.enrich.hop import make_provider

        try:
            make_provider(spec)
        except resolve.MissingBlock as exc:
            return f"--provider {spec}: {exc}"
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
