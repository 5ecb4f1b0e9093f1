"""`leadflow crm`: leadflow's decisions in the CRM where reps work (HubSpot, Salesforce).

- ``sync``: send the waiting ``crm_sync`` messages (the ``crm-sync`` deployment does it every
  minute); ``--dry-run`` reads the CRM and prints, per field, what would change, writing
  nothing;
- ``diff``: drift between leadflow and the CRM for the leads leadflow wrote there;
- ``pull``: read back status and owner changes people made in the CRM;
- ``check``: the mapping, the credentials, the CRM's properties and the reps as CRM users.
Exit codes: 0 done; 1 the CRM refused (credentials, a check failed); 2 bad mapping or
missing credentials; 3 messages left unsent (they wait in the outbox).
"""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import (
    DATABASE,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNDELIVERED,
    VARIABLES,
    Command,
    emit,
    fail,
    run_flow,
    timestamp,
)

ENVIRONMENT = {
    "LEADFLOW_CRM": "CRMs to sync, comma-separated (over each rules/crm/*.yaml `enabled`)",
    "LEADFLOW_HUBSPOT_TOKEN": "HubSpot private app token (no Prefect server: else the block)",
    "LEADFLOW_HUBSPOT_URL": "HubSpot API base URL (default https://api.hubapi.com)",
    "LEADFLOW_HUBSPOT_BLOCK": "name of the Leadflow HubSpot block (default leadflow-hubspot)",
    "LEADFLOW_SALESFORCE_CLIENT_ID": "Salesforce connected app (with _CLIENT_SECRET)",
    "LEADFLOW_SALESFORCE_LOGIN_URL": "Salesforce login URL (default login.salesforce.com)",
    "LEADFLOW_SALESFORCE_USERNAME": "user for the username-password flow (with _PASSWORD)",
    "LEADFLOW_SALESFORCE_BLOCK": "name of the Salesforce block (default leadflow-salesforce)",
}


def _mappings(args: argparse.Namespace) -> list[Any]:
    """The mappings the command works on; a bad one is a ``ConfigError`` of one line naming
    the file and the field (exit 2)."""
    from leadflow.crm import mapping as crm_mapping
    from tasks.rules_check import one_line

    try:
        if args.crm:
            return [crm_mapping.load_mapping(args.crm)[0]]
        chosen = crm_mapping.enabled()
    except crm_mapping.ConfigError as exc:
        raise crm_mapping.ConfigError(one_line(str(exc))) from exc
    if not chosen:
        raise crm_mapping.ConfigError(
            "no CRM enabled: set enabled: true in rules/crm/hubspot.yaml or salesforce.yaml, "
            "set LEADFLOW_CRM=hubspot, or name one with --crm"
        )
    return chosen


def _engine() -> Any:
    from leadflow import store
    from leadflow.settings import get_settings

    store.upgrade()
    return store.get_engine(get_settings().database_url)


def _human_changes(data: dict[str, Any]) -> str:
    lines = []
    for crm, plan in data["crms"].items():
        lines.append(
            f"{crm}: {plan['leads']} lead(s) waiting: {plan['create']} to create, "
            f"{plan['update']} to update, {plan['unchanged']} unchanged, "
            f"{plan['refused']} refused"
        )
        for reason in plan["refusals"]:
            lines.append(f"  refused: {reason}")
        for name, entry in plan["fields"].items():
            examples = "; ".join(
                f"lead {e['lead']}: {e['crm']} -> {e['leadflow']}" for e in entry["examples"]
            )
            lines.append(
                f"  {name:<16} -> {entry['property']:<28} {entry['changes']:>7} change(s)"
                f"  e.g. {examples}"
            )
        for name, count in plan["kept"].items():
            lines.append(f"  {name:<16} kept as set in the CRM for {count} lead(s) (policy)")
    lines.append("dry run: nothing was written")
    return "\n".join(lines)


def _human_diff(data: dict[str, Any]) -> str:
    lines = []
    for crm, drift in data["crms"].items():
        fields = drift["fields"]
        lines.append(
            f"{crm}: {drift['leads']} lead(s) written there; {drift['missing_in_crm']} missing "
            f"in the CRM; {sum(f['drifted'] for f in fields.values())} field value(s) differ"
        )
        for name, entry in fields.items():
            examples = "; ".join(
                f"lead {e['lead']}: CRM {e['crm']} / leadflow {e['leadflow']}"
                for e in entry["examples"]
            )
            lines.append(
                f"  {name:<16} {entry['drifted']:>7} ({entry['examples'][0]['policy']})  "
                f"e.g. {examples}"
            )
    return "\n".join(lines)


def _human_check(data: dict[str, Any]) -> str:
    return "\n".join(
        f"{'ok  ' if f['ok'] else 'FAIL'} {crm:<10} {f['line']}"
        for crm, findings in data["crms"].items()
        for f in findings
    )


def _human_sync(data: dict[str, Any]) -> str:
    return "\n".join(r["message"] for r in (data.get("crms") or {}).values()) or "nothing to do"


def cmd_crm(args: argparse.Namespace) -> int:
    from blocks.crm import load_adapter

    if args.action == "sync" and not args.dry_run:
        from flows.crm import crm_sync

        _mappings(args)  # a typo'd mapping or no CRM: one line, exit 2, before any flow
        code = run_flow(args, crm_sync, _human_sync)
        return code
    if args.action == "pull":
        from flows.crm import crm_pull

        _mappings(args)
        return run_flow(args, crm_pull, _human_sync)
    mappings = _mappings(args)
    if args.action == "check":
        from leadflow.crm.check import check

        engine = _engine()
        from leadflow.crm.store import rep_emails

        with engine.connect() as conn:
            emails = rep_emails(conn)
        crms = {}
        for mapping in mappings:
            findings = check(load_adapter(mapping.crm, mapping.id_property), mapping, emails)
            crms[mapping.crm] = [{"ok": f.ok, "what": f.what, "line": f.line} for f in findings]
        emit(args, {"crms": crms}, _human_check)
        return EXIT_OK if all(f["ok"] for fs in crms.values() for f in fs) else EXIT_FAILED
    from leadflow.crm import sync as crm_sync_core
    from leadflow.crm.base import CrmError

    engine = _engine()
    crms = {}
    for mapping in mappings:
        adapter = load_adapter(mapping.crm, mapping.id_property)
        try:
            if args.action == "diff":
                crms[mapping.crm] = crm_sync_core.diff(engine, adapter, mapping, limit=args.limit)
            else:
                crms[mapping.crm] = crm_sync_core.dry_run(
                    engine, adapter, mapping, limit=args.limit
                )
        except CrmError as exc:
            from leadflow.quarantine import masked

            return fail(f"{mapping.crm}: {masked(str(exc))}", EXIT_FAILED)
    emit(args, {"crms": crms}, _human_diff if args.action == "diff" else _human_changes)
    return EXIT_OK


def _crm_arguments(command: argparse.ArgumentParser) -> None:
    actions = command.add_subparsers(dest="action", required=True)
    sync = actions.add_parser("sync", help="send waiting sync messages (--dry-run: show them)")
    sync.add_argument(
        "--dry-run",
        action="store_true",
        help="read the CRM, print what would change, write nothing",
    )
    diff = actions.add_parser("diff", help="drift between leadflow and the CRM")
    pull = actions.add_parser("pull", help="read back status and owner changes made in the CRM")
    check = actions.add_parser("check", help="mapping, credentials, properties, reps as users")
    for action in (sync, diff, pull, check):
        action.add_argument("--crm", choices=["hubspot", "salesforce"], help="default: enabled")
        action.add_argument("--json", action="store_true")
    for action in (sync, diff):
        action.add_argument("--limit", type=int, help="at most this many leads (messages)")
    for action in (sync, pull):
        action.add_argument("--now", type=timestamp)


COMMANDS = (
    Command(
        "crm",
        cmd_crm,
        "leadflow's decisions in HubSpot/Salesforce: sync [--dry-run], diff, pull, check",
        _crm_arguments,
        {**{n: VARIABLES[n] for n in (*DATABASE, "PREFECT_API_URL")}, **ENVIRONMENT},
    ),
)

__all__ = ["COMMANDS", "EXIT_UNDELIVERED"]
