"""The ``leadflow`` command line.

Every command that runs a hop runs it as a Prefect flow (on Prefect's ephemeral API unless
``PREFECT_API_URL`` points at a server). ``--json`` prints one JSON document on stdout and
nothing else there; logs go to stderr. Exit codes: 0 done, 1 a gate or the audit failed,
2 bad input or config (the message names the file, row or field), 3 done, but messages were
left undelivered (failed for now, put back, or dead: ``leadflow outbox list``).
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

from app.cli_outbox import EXIT_UNDELIVERED, delivery_line, undelivered_code

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
__all__ = ["EXIT_UNDELIVERED", "main"]


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
    from leadflow.config import ConfigError
    from leadflow.mapping import load_mapping

    try:
        mapping, _ = load_mapping(args.mapping)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.target and args.target != mapping.target:
        mapping = mapping.model_copy(update={"target": args.target})
    if mapping.target == "activities":
        from tasks.activities import reject_policy

        try:
            reject_policy()  # decisions follow the SLA rules: a typo there stops here
        except ConfigError as exc:
            return _fail(str(exc))
    if mapping.api is None:
        from tasks.capture.run import check_inputs
        from tasks.sources import InputError

        # A typo'd column or a missing file is one clear line, before a flow starts.
        try:
            check_inputs(args.path, mapping)
        except InputError as exc:
            return _fail(str(exc))
    from flows.capture import capture

    return _run_flow(
        args,
        capture,
        _human_ingest,
        path=args.path,
        source=args.source,
        mapping_path=args.mapping,
        now=args.now,
        max_quarantine_rate=args.max_quarantine_rate,
        target=args.target or mapping.target,
    )


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
    from tasks import rules_check

    if problem := _provider_problem(args.provider):
        return _fail(problem)
    rules_check.pipeline()  # every hop's rules first: a typo is one line, exit 2, nothing moves

    return _run_flow(args, pipeline, _human_run, now=args.now, provider=args.provider)


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


def _provider_problem(spec: str | None) -> str | None:
    """A ``--provider`` that cannot work, in one line (checked before a flow starts)."""
    if not spec or spec == "none" or spec.startswith("block:"):
        return None
    if spec.startswith("file:"):
        path = Path(spec[5:])
        return None if path.is_file() else f"--provider {spec}: no such file {path}"
    return f"--provider {spec!r}: unknown provider; use none, file:PATH or block:NAME"


def cmd_enrich(args: argparse.Namespace) -> int:
    from flows.enrich import enrich

    if problem := _provider_problem(args.provider):
        return _fail(problem)

    return _run_flow(args, enrich, _human_enrich, now=args.now, provider=args.provider)


def _run_flow(
    args: argparse.Namespace,
    flow_fn: Callable[..., Any],
    human: Callable[[dict[str, Any]], str],
    refused_code: int | None = None,
    **kwargs: Any,
) -> int:
    """Run a flow; print its summary. ``refused_code``: the exit code, with the state's
    message as the one line printed, when the flow ends Failed on purpose (with data)."""
    from leadflow import progress, store

    store.upgrade()
    with progress.shown():
        state = flow_fn(return_state=True, **kwargs)
    data, code, message = _state_outcome(state)
    if "error" in data:
        return _fail(message or f"{getattr(flow_fn, 'name', 'flow')} failed", code)
    if refused_code is not None and code == EXIT_FAILED:
        return _fail(message or f"{getattr(flow_fn, 'name', 'flow')} failed", refused_code)
    _emit(args, data, human)
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


def _human_score(data: dict[str, Any]) -> str:
    return (
        f"rules {data.get('version')}: scored {data.get('scored', 0)} new leads, "
        f"{data.get('rescored_engaged', 0)} with new engagement; moved to mql {data.get('mql', 0)}, "
        f"nurturing {data.get('nurturing', 0)}, disqualified {data.get('disqualified', 0)}; "
        f"quarantined {data.get('quarantined', 0)} ({data.get('seconds', 0)} s)"
    )


def _scoring_rules_ok(spec: str | None) -> None:
    """Check a scoring rules file before a flow starts: a typo is one line, exit 2."""
    from tasks.scoring import rule_source

    rule_source(spec)


def cmd_score(args: argparse.Namespace) -> int:
    from flows.score import score

    _scoring_rules_ok(args.rules)

    return _run_flow(args, score, _human_score, now=args.now, rules=args.rules)


def _human_rescore(data: dict[str, Any]) -> str:
    from tasks.rescore_diff import diff_markdown

    return (
        diff_markdown(data)
        + f"\n\n({data.get('seconds', 0)} s; quarantined by the gate: {data.get('quarantined', 0)})"
    )


def cmd_rescore(args: argparse.Namespace) -> int:
    from flows.score import rescore
    from tasks.score_hop import parse_scope

    _scoring_rules_ok(args.rules)
    parse_scope(args.scope)

    return _run_flow(
        args,
        rescore,
        _human_rescore,
        rules=args.rules,
        scope=args.scope,
        dry_run=args.dry_run,
        now=args.now,
        top_movers=args.top,
    )


def _human_backtest(data: dict[str, Any]) -> str:
    from tasks.backtest import report_markdown

    return report_markdown(data, None) + f"\n\nchart: {data.get('chart')}"


def cmd_backtest(args: argparse.Namespace) -> int:
    from flows.backtest import backtest

    _scoring_rules_ok(args.rules)

    return _run_flow(args, backtest, _human_backtest, rules=args.rules, now=args.now)


def _human_learn(data: dict[str, Any]) -> str:
    lines = [
        f"wrote {data['out']}: {data['rules']} rules from {data['leads']} leads ({data['won']} won)",
        f"held-out AUC: model {data['model_auc_held_out']}, integer rules {data['rules_auc_held_out']}",
        f"MQL threshold {data['mql_threshold']}; columns not used: "
        + (", ".join(f"{k} ({v})" for k, v in data.get("skipped_columns", {}).items()) or "none"),
    ]
    if data.get("leakage_warning"):
        lines.append(
            "WARNING: an AUC this high usually means a column leaks the outcome; check the rules and --exclude it"
        )
    return "\n".join(lines)


def cmd_learn(args: argparse.Namespace) -> int:
    from flows.backtest import learn

    return _run_flow(
        args,
        learn,
        _human_learn,
        refused_code=EXIT_BAD_INPUT,  # too few leads to learn from: the input, not a gate
        out=args.out,
        exclude=args.exclude,
        now=args.now,
        seed=args.seed,
    )


def cmd_explain(args: argparse.Namespace) -> int:
    from leadflow import store
    from tasks.scoring import explain_lead

    store.upgrade()
    with store.get_engine().connect() as conn:
        lead_id = _lead_id(conn, args.lead_id)
        data = explain_lead(conn, lead_id) if lead_id is not None else None
        if data is not None:
            from tasks.route_hop import explain_routing

            data["routing"] = explain_routing(conn, lead_id)
    if data is None:
        return _fail(f"no lead with id, email or external id {args.lead_id!r}")
    _emit(args, data, _human_explain)
    return EXIT_OK


def _lead_id(conn: Any, key: str) -> int | None:
    """A lead's id from its id, its email (any case) or its external id (with or without
    the ``source:`` namespace)."""
    from sqlalchemy import or_, select

    from leadflow import tables as t

    leads = t.leads
    if key.strip().isdigit():
        return int(key)
    if "@" in key:
        where = leads.c.email == key.strip().lower()
    else:
        where = or_(leads.c.external_id == key, leads.c.external_id.like(f"%:{key}"))
    # Two leads can share an external id across sources: then the key says nothing.
    ids = list(
        conn.execute(select(leads.c.id).where(where).order_by(leads.c.id).limit(2)).scalars()
    )
    return ids[0] if len(ids) == 1 else None


def _human_explain(data: dict[str, Any]) -> str:
    lead = data["lead"]
    lines = [f"lead {lead['id']} ({lead.get('company') or 'no company'}): status {lead['status']}"]
    latest = data.get("latest")
    if not latest:
        lines.append("not scored yet")
    else:
        low, high = latest["bounds"] or (None, None)
        lines.append(
            f"score {latest['score']:g} ({latest['temperature']}), decision {latest['decision']}, "
            f"rules {latest['version']}, as of {latest['scored_at']}"
        )
        for rule in latest["rules"]:
            lines.append(f"  {rule['points']:>+8g}  {rule['rule']:<28} {rule['condition']}")
        lines.append(
            f"  total {latest['raw_points']:g} points"
            + (f", mapped from [{low:g}, {high:g}] to 0-100" if low is not None else "")
        )
        lines.append(f"{data['scores']} score(s) in history")
    for decision in data.get("routing") or []:
        lines.append(
            f"routed to {decision['rep_code']} ({decision['step']}"
            + (f", rule {decision['rule']}" if decision.get("rule") else "")
            + (f", pool {decision['pool']}" if decision.get("pool") else "")
            + f", routing rules {decision['version']}) at {decision['assigned_at']}: "
            + f"{decision['reason']}"
        )
        skipped = {k: v for k, v in (decision.get("candidates") or {}).items() if v != "assigned"}
        if skipped:
            lines.append("  skipped: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()))
    lines.append("ledger:")
    for event in data.get("ledger", []):
        arrow = (
            f"{event['from_status'] or '-'} -> {event['to_status']}"
            if event["kind"] == "transition"
            else event["kind"]
        )
        changed = (event.get("details") or {}).get("changed") if event["kind"] == "merge" else None
        note = (
            f" (changed: {', '.join(changed) if changed else 'nothing'})"
            if event["kind"] == "merge"
            else ""
        )
        lines.append(f"  {event['occurred_at']}  {arrow}: {event['reason'] or ''}{note}")
    return "\n".join(lines)


def cmd_generate(args: argparse.Namespace) -> int:
    from app.generate import generate

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
    if args.kind == "reps" and _routing_reps_csv(Path(args.path)):
        return _load_routing_reps(args)
    try:
        with store.get_engine().begin() as conn:
            counts = reference.load(conn, args.kind, Path(args.path))
    except reference.ReferenceError as exc:
        return _fail(str(exc))
    _emit(args, counts, lambda d: f"{args.kind}: inserted {d['inserted']}, updated {d['updated']}")
    return EXIT_OK


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
    from leadflow import routing_store, store
    from leadflow.settings import get_settings
    from tasks.route_hop import load_context

    context = load_context.fn(args.rules, args.path)
    with store.get_engine().begin() as conn:
        ids = routing_store.sync_reps(conn, context.rules, store.utcnow())
    data = {
        "reps": len(ids),
        "version": context.version,
        "rules": args.rules or str(get_settings().rules_dir / "routing.yaml"),
    }
    _emit(
        args,
        data,
        lambda d: (
            f"reps: {d['reps']} valid against {d['rules']} "
            f"(routing version {d['version']}); route with --reps {args.path}"
        ),
    )
    return EXIT_OK


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
    from tasks.route_hop import load_context

    load_context.fn(args.rules, args.reps)  # a typo is one line, exit 2, before any flow
    if args.dry_run:
        from flows.route import route_dry_run

        if not args.rules:
            return _fail("route --dry-run needs --rules FILE (the changed rules to replay)")
        return _run_flow(
            args, route_dry_run, _human_route, rules=args.rules, since=args.since, now=args.now
        )
    from flows.route import route

    return _run_flow(
        args,
        route,
        _human_route,
        now=args.now,
        rules=args.rules,
        notifier=args.notifier,
        reps=args.reps,
    )


def _human_sla(data: dict[str, Any]) -> str:
    if "gate" in data:
        return "SLA gate failed; nothing was recorded: " + json.dumps(data["gate"], default=str)
    lines = [
        f"SLA check at {data['now']}: {data['timers_started']} timers started, "
        f"{data['timers_met']} met, {data['warnings']} warnings, {data['level_1']} breaches, "
        f"{data['level_2']} escalations (policies {data.get('version')}, {data.get('seconds')} s)",
    ]
    for action, count in sorted((data.get("actions") or {}).items()):
        lines.append(f"  {action:<16} {count}")
    lines.append(f"open breaches: {data.get('open_breaches', 0)}")
    if sent := data.get("notifications"):
        lines.append(f"notifications: {delivery_line(sent)}")
    rows = data.get("compliance") or []
    if rows:
        lines.append(f"  {'policy':<20} {'rep':<14} timers on-time late open-breach compliance")
        for row in rows:
            share = row.get("compliance")
            shown = "-" if share is None or share != share else f"{share:.0%}"
            lines.append(
                f"  {row['policy']:<20} {row['rep'] or '-':<14} {row['timers']:>6} "
                f"{row['on_time']:>7} {row['late']:>4} {row['breached_open']:>11} {shown:>10}"
            )
    return "\n".join(lines)


def cmd_sla(args: argparse.Namespace) -> int:
    from tasks.sla import load_context

    load_context.fn(args.rules, args.routing, args.reps)  # a typo: one line, exit 2, no flow
    from flows.sla import sla

    return _run_flow(
        args,
        sla,
        _human_sla,
        now=args.now,
        rules=args.rules,
        routing=args.routing,
        reps=args.reps,
        notifier=args.notifier,
    )


def _human_nurture(data: dict[str, Any]) -> str:
    lines = [
        f"nurture tick (cadences {data.get('version')}, {data.get('seconds')} s): "
        f"{data.get('candidates', 0)} leads looked at",
        f"  enrolled          {data.get('enrolled', 0)}",
        f"  touches queued    {data.get('queued', 0)}",
        f"  deferred          {data.get('deferred', 0)} (quiet hours {data.get('deferred_quiet', 0)}, "
        f"frequency cap {data.get('deferred_cap', 0)})",
        f"  suppressed        {data.get('suppressed', 0)}",
        f"  exited            {data.get('exited', 0)} (+{data.get('left_nurture', 0)} left nurture)",
        f"  finished          {data.get('finished', 0)} (disqualified {data.get('disqualified', 0)})",
    ]
    if data.get("template_failed"):
        lines.append(f"  template errors   {data['template_failed']} (touches wait for a fix):")
        lines.extend(f"    {error}" for error in data.get("template_errors", [])[:5])
    sent = data.get("notifications") or {}
    if sent:
        lines.append(f"  delivery          {delivery_line(sent)}")
    return "\n".join(lines)


def cmd_nurture(args: argparse.Namespace) -> int:
    from tasks.nurture import load_context

    load_context(args.rules)  # a typo: one line, exit 2, no flow
    from flows.nurture import nurture

    return _run_flow(
        args, nurture, _human_nurture, now=args.now, rules=args.rules, notifier=args.notifier
    )


def _human_recycle(data: dict[str, Any]) -> str:
    lines = [
        f"recycle (policy {data.get('version')}, {data.get('seconds')} s): "
        f"{data.get('candidates', 0)} leads looked at",
        f"  back to nurture   {data.get('recycled', 0)} (long-term cadence {data.get('long_term', 0)})",
        f"  disqualified      {data.get('disqualified', 0)} (recycled too often)",
    ]
    for reason, count in sorted((data.get("reasons") or {}).items()):
        lines.append(f"    {reason:<22} {count}")
    leaks = data.get("leakage") or {}
    lines.append(
        f"leakage: {leaks.get('no_owner_no_cadence', 0)} no owner and no cadence, "
        f"{leaks.get('stuck', 0)} stuck, {leaks.get('dead_claim', 0)} held by a dead run "
        "(leadflow report lists them)"
    )
    return "\n".join(lines)


def cmd_recycle(args: argparse.Namespace) -> int:
    from tasks.recycle import load_context

    load_context(args.rules)  # a typo: one line, exit 2, no flow
    from flows.recycle import recycle

    return _run_flow(args, recycle, _human_recycle, now=args.now, rules=args.rules)


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP endpoint: ``POST /leads`` (the speed-to-lead door) and unsubscribe links."""
    import logging

    import uvicorn

    from app.web import Capture, create_app
    from blocks import registry
    from leadflow import store

    store.upgrade()
    token, missing = registry.capture_token(args.token_block)
    if token is None and args.token_block:
        return _fail(missing)
    server = registry.api_url()
    lane = args.lane or ("worker" if server else "inline")
    capture = Capture(
        token=token,
        mapping_path=args.mapping,
        source=args.source,
        hand_off=_hand_off(lane),
        emit_events=bool(server),
        missing_token=missing,
    )
    app = create_app(capture=capture)  # a mapping with a typo stops here, before serving
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(
        f"leadflow serve: http://{args.host}:{args.port} (POST /leads: "
        f"{'on' if token else 'off, ' + missing}; lane: {lane})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def _hand_off(lane: str) -> Callable[[list[int]], Any] | None:
    """What ``serve`` does with each group of captured leads: queue a background task for
    the lane's task worker (``worker``), run the lane in this process (``inline``: no
    Prefect server needed), or nothing (``off``: the scheduled pipeline takes them)."""
    if lane == "off":
        return None
    if lane == "worker":
        from tasks.lane import speed_to_lead

        return lambda ids: speed_to_lead.delay(ids)
    from concurrent.futures import ThreadPoolExecutor

    from tasks.lane import hand, run_lane

    one_at_a_time = ThreadPoolExecutor(1, thread_name_prefix="lane")

    def run(ids: list[int]) -> None:
        try:
            summary = run_lane(ids, handed=True)
        except Exception as exc:  # the leads wait in their status for the pipeline
            print(f"lane: leads left to the pipeline: {type(exc).__name__}", file=sys.stderr)
            return
        if summary["leads"]:
            hops = ", ".join(
                f"{k} {v.get('claimed', 'failed')}" for k, v in summary["hops"].items()
            )
            print(
                f"lane: {summary['leads']} lead(s) in {summary['seconds']} s: {hops}",
                file=sys.stderr,
            )

    def hand_off(ids: list[int]) -> None:
        hand(ids)  # a run still queued behind another takes them with its own
        one_at_a_time.submit(run, ids)

    return hand_off


def cmd_lane(args: argparse.Namespace) -> int:
    """The lane's task worker: serves ``speed_to_lead`` background tasks until stopped."""
    from blocks import registry

    if not registry.api_url():
        return _fail(
            "the lane's task worker needs a Prefect server: set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api after `prefect server start`)"
        )
    from leadflow import store
    from tasks import lane

    store.upgrade()
    lane.serve(limit=args.limit)
    return EXIT_OK


def cmd_blocks(args: argparse.Namespace) -> int:
    """Register leadflow's block types, or create its blocks from environment variables."""
    from blocks import registry

    if args.action == "register":
        data = {"registered": registry.register()}
    else:
        data = registry.init(overwrite=args.overwrite)
    _emit(args, data, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from flows.report import report
    from tasks.kpi import markdown

    return _run_flow(args, report, lambda data: markdown(data), now=args.now)


def cmd_demo(args: argparse.Namespace) -> int:
    """`make run`: database, sample data, ingest, pipeline, audit, summary."""
    from app.demo import demo
    from tasks import rules_check

    rules_check.demo()  # every rules file the demo uses: a typo is one line, exit 2
    state = demo(leads=args.leads, seed=args.seed, return_state=True)
    data, code, message = _state_outcome(state)
    if args.json:
        print(json.dumps(data, default=str, sort_keys=True))
    else:
        from app.demo import describe

        print(describe(data))
    if message:
        print(f"leadflow: {message}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- parser


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
    _emit(args, {"claims": claims, "released": released}, _human_claims)
    return EXIT_OK


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


def cmd_quarantine(args: argparse.Namespace) -> int:
    """List, export or release quarantined records."""
    from leadflow import quarantine, store

    store.upgrade()
    engine = store.get_engine()
    selection = quarantine.Selection(
        ids=tuple(getattr(args, "ids", None) or ()),
        batch_id=args.batch,
        hop=getattr(args, "hop", None),
        reason=getattr(args, "reason", None),
    )
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
        if not (selection.ids or selection.batch_id is not None or selection.reason):
            return _fail("say which records to release: IDs, --batch N or --reason R")
        from leadflow.mapping import load_mapping
        from tasks.capture.release import release_capture

        mapping, version = load_mapping(args.mapping) if args.mapping else (None, "default")
        data = release_capture(
            engine,
            selection,
            now=datetime.now(UTC),
            mapping=mapping,
            mapping_version=version,
            max_quarantine_rate=args.max_quarantine_rate,
        )
    _emit(args, data, _human_quarantine)
    return EXIT_FAILED if data.get("refused") else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leadflow", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
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
        "ingest",
        cmd_ingest,
        "capture leads (or engagement events, or sales activities) from a file, folder or REST API",
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
    ingest.add_argument(
        "--target",
        choices=["leads", "events", "activities"],
        help="what the records are (default: the mapping's)",
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

    score = add("score", cmd_score, "score enriched leads (and leads with new engagement)")
    score.add_argument("--rules", help="rules file or block:NAME (default rules/scoring.yaml)")
    score.add_argument("--now", type=_timestamp)
    score.add_argument("--json", action="store_true")

    rescore = add("rescore", cmd_rescore, "score leads again after a rules change; show the diff")
    rescore.add_argument("--rules", required=True, help="rules file or block:NAME")
    rescore.add_argument("--scope", default="all", help="all | status:a,b | where:<condition YAML>")
    rescore.add_argument("--dry-run", action="store_true", help="report the diff, change nothing")
    rescore.add_argument("--top", type=int, default=20, help="biggest movers to list")
    rescore.add_argument("--now", type=_timestamp)
    rescore.add_argument("--json", action="store_true")

    explain = add("explain", cmd_explain, "why a lead has its score")
    explain.add_argument("lead_id", help="the lead's id, email or external id")
    explain.add_argument("--json", action="store_true")

    backtest = add(
        "backtest", cmd_backtest, "score leads with known outcomes and measure the rules"
    )
    backtest.add_argument("--rules", help="rules file or block:NAME (default rules/scoring.yaml)")
    backtest.add_argument("--now", type=_timestamp)
    backtest.add_argument("--json", action="store_true")

    learn = add("learn", cmd_learn, "learn a rules file from leads with known outcomes")
    learn.add_argument("--out", required=True, help="where to write the rules file")
    learn.add_argument("--exclude", nargs="*", default=[], help="columns not to learn from (leaks)")
    learn.add_argument("--seed", type=int, default=7)
    learn.add_argument("--now", type=_timestamp)
    learn.add_argument("--json", action="store_true")

    generate = add("generate", cmd_generate, "write realistic synthetic sample data")
    generate.add_argument("--leads", type=int, default=5000)
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument("--out", required=True)
    generate.add_argument("--now", type=_timestamp)
    generate.add_argument("--json", action="store_true")

    load = add("load", cmd_load, "load reference data (reps, accounts) from CSV")
    load.add_argument("kind", choices=["reps", "accounts"])
    load.add_argument("path")
    load.add_argument(
        "--rules", help="reps in the routing format: the routing rules they are checked against"
    )
    load.add_argument("--json", action="store_true")

    route = add("route", cmd_route, "route MQLs to reps (or --dry-run a changed rules file)")
    route.add_argument("--rules", help="routing rules file (default rules/routing.yaml)")
    route.add_argument("--reps", help="reps CSV replacing the rules' reps (or LEADFLOW_REPS_FILE)")
    route.add_argument("--notifier", help="block:NAME[,block:NAME] (default LEADFLOW_NOTIFIER)")
    route.add_argument(
        "--dry-run", action="store_true", help="replay; show the diff; write nothing"
    )
    route.add_argument("--since", type=_timestamp, help="dry run: MQLs routed since this time")
    route.add_argument("--now", type=_timestamp)
    route.add_argument("--json", action="store_true")

    sla = add("sla", cmd_sla, "check SLA timers: warn, record breaches, escalate, reassign")
    sla.add_argument("--rules", help="SLA policies (default rules/sla.yaml)")
    sla.add_argument(
        "--routing", help="routing rules for reassignment (default rules/routing.yaml)"
    )
    sla.add_argument("--reps", help="reps CSV replacing the routing rules' reps")
    sla.add_argument("--notifier", help="block:NAME[,block:NAME] (default LEADFLOW_NOTIFIER)")
    sla.add_argument("--now", type=_timestamp, help="check as of this time (default: now)")
    sla.add_argument("--json", action="store_true")

    nurture = add("nurture", cmd_nurture, "one nurture tick: enrol, send due touches, exit, finish")
    nurture.add_argument("--rules", help="cadences (default rules/cadences.yaml)")
    nurture.add_argument(
        "--notifier", help="block:NAME or maildir:PATH (default LEADFLOW_NOTIFIER)"
    )
    nurture.add_argument("--now", type=_timestamp, help="tick as of this time (default: now)")
    nurture.add_argument("--json", action="store_true")

    recycle = add("recycle", cmd_recycle, "send stalled leads back to nurture; report leakage")
    recycle.add_argument("--rules", help="recycling policy (default rules/recycle.yaml)")
    recycle.add_argument("--now", type=_timestamp, help="as of this time (default: now)")
    recycle.add_argument("--json", action="store_true")

    serve = add("serve", cmd_serve, "HTTP endpoint: POST /leads (speed to lead), unsubscribe links")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--mapping",
        default=str(Path(__file__).resolve().parents[1] / "rules" / "sources" / "web_form.yaml"),
        help="mapping YAML for posted fields (default rules/sources/web_form.yaml)",
    )
    serve.add_argument("--source", help="source recorded on posted leads (default: the mapping's)")
    serve.add_argument(
        "--token-block",
        help="Secret block holding the capture token (default: block leadflow-capture-token "
        "when PREFECT_API_URL is set, else $LEADFLOW_CAPTURE_TOKEN)",
    )
    serve.add_argument(
        "--lane",
        choices=["worker", "inline", "off"],
        help="captured leads go to the lane's task worker (default with PREFECT_API_URL), "
        "through the lane in this process (default without), or wait for the pipeline",
    )

    lane = add("lane", cmd_lane, "the speed-to-lead lane's task worker (needs a Prefect server)")
    lane.add_argument("--limit", type=int, default=4, help="lane task runs at once")

    blocks = add("blocks", cmd_blocks, "register leadflow's block types; create blocks from env")
    blocks.add_argument("action", choices=["register", "init"])
    blocks.add_argument("--overwrite", action="store_true", help="replace blocks that exist")
    blocks.add_argument("--json", action="store_true")

    report = add(
        "report", cmd_report, "KPIs: funnel, speed to lead, sources, waiting work, velocity"
    )
    report.add_argument("--now", type=_timestamp)
    report.add_argument("--json", action="store_true")

    claims = add("claims", cmd_claims, "list the claims holding leads; free those of dead runs")
    claims.add_argument(
        "--release", action="store_true", help="free leads held by dead (expired) claims"
    )
    claims.add_argument("--token", help="free this claim, live or not (its run is gone)")
    claims.add_argument("--json", action="store_true")

    held = add("quarantine", cmd_quarantine, "list, export or release quarantined records")
    actions = held.add_subparsers(dest="action", required=True)
    listed = actions.add_parser(
        "list", help="held records (emails, phones masked), counts by reason"
    )
    listed.add_argument("--batch", type=int)
    listed.add_argument("--hop", help="capture, enriched, scored, ...")
    listed.add_argument("--reason", help="an expectation name, e.g. email_is_valid")
    listed.add_argument("--json", action="store_true")
    release = actions.add_parser("release", help="feed held capture records through the hop again")
    release.add_argument("ids", nargs="*", type=int, help="quarantine ids (from `list`)")
    release.add_argument("--batch", type=int)
    release.add_argument("--reason")
    release.add_argument("--mapping", help="the (fixed) mapping to read them with")
    release.add_argument("--max-quarantine-rate", type=float)
    release.add_argument("--json", action="store_true")
    exported = actions.add_parser("export", help="a batch's held records as received, to fix")
    exported.add_argument("--batch", type=int, required=True)
    exported.add_argument("--out", required=True)
    exported.add_argument("--json", action="store_true")

    from app.cli_outbox import add_parser as add_outbox

    add_outbox(sub, _timestamp)

    demo = add("demo", cmd_demo, "the whole thing on sample data (what `make run` does)")
    demo.add_argument("--leads", type=int, default=5000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_prefect()
    if argv is None:  # a real command, not a call from Python: tie its children to it
        from leadflow.watchdog import guard_children

        guard_children()
    args = build_parser().parse_args(argv)
    from leadflow.config import ConfigError
    from tasks.sources import InputError

    try:
        return args.handler(args)
    except BrokenPipeError:
        # `leadflow ... | head`: the reader left; nothing more to say, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (ConfigError, InputError) as exc:
        if args.debug:
            raise
        return _fail(str(exc))
    except Exception as exc:
        if args.debug:
            raise
        return _fail(
            f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", EXIT_FAILED
        )


if __name__ == "__main__":
    sys.exit(main())
