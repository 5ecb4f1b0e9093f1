"""`leadflow` commands: the pipeline's hops: run, enrich, score, rescore, explain, backtest, learn."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import (
    DATABASE,
    EXIT_BAD_INPUT,
    EXIT_OK,
    HOPS,
    PREFECT,
    RULES,
    Command,
    emit,
    fail,
    provider_problem,
    run_flow,
    scoring_rules_ok,
    timestamp,
)


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

    if problem := provider_problem(args.provider):
        return fail(problem)
    rules_check.pipeline()  # every hop's rules first: a typo is one line, exit 2, nothing moves

    return run_flow(args, pipeline, _human_run)


def _run_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--now", type=timestamp)
    command.add_argument(
        "--provider", help="enrich hop's firmographics provider: none | file:PATH | block:NAME"
    )
    command.add_argument("--json", action="store_true")


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

    if problem := provider_problem(args.provider):
        return fail(problem)

    return run_flow(args, enrich, _human_enrich)


def _enrich_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--provider", help="none | file:PATH | block:NAME (default: rules/enrichment.yaml)"
    )
    command.add_argument("--now", type=timestamp)
    command.add_argument("--json", action="store_true")


def _human_score(data: dict[str, Any]) -> str:
    return (
        f"rules {data.get('version')}: scored {data.get('scored', 0)} new leads, "
        f"{data.get('rescored_engaged', 0)} with new engagement; moved to mql {data.get('mql', 0)}, "
        f"nurturing {data.get('nurturing', 0)}, disqualified {data.get('disqualified', 0)}; "
        f"quarantined {data.get('quarantined', 0)} ({data.get('seconds', 0)} s)"
    )


def cmd_score(args: argparse.Namespace) -> int:
    from flows.score import score

    scoring_rules_ok(args.rules)

    return run_flow(args, score, _human_score)


def _score_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--rules", help="rules file or block:NAME (default rules/scoring.yaml)")
    command.add_argument("--now", type=timestamp)
    command.add_argument("--json", action="store_true")


def _human_rescore(data: dict[str, Any]) -> str:
    from leadflow.scoring.replay import diff_markdown

    return (
        diff_markdown(data)
        + f"\n\n({data.get('seconds', 0)} s; quarantined by the gate: {data.get('quarantined', 0)})"
    )


def cmd_rescore(args: argparse.Namespace) -> int:
    from flows.score import rescore
    from leadflow.scoring.hop import parse_scope

    scoring_rules_ok(args.rules)
    parse_scope(args.scope)

    return run_flow(args, rescore, _human_rescore)


def _rescore_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--rules", required=True, help="rules file or block:NAME")
    command.add_argument("--scope", default="all", help="all | status:a,b | where:<condition YAML>")
    command.add_argument("--dry-run", action="store_true", help="report the diff, change nothing")
    command.add_argument(
        "--top", dest="top_movers", type=int, default=20, help="biggest movers to list"
    )
    command.add_argument("--now", type=timestamp)
    command.add_argument("--json", action="store_true")


def _human_backtest(data: dict[str, Any]) -> str:
    from leadflow.scoring.backtest import report_markdown

    return report_markdown(data, None) + f"\n\nchart: {data.get('chart')}"


def cmd_backtest(args: argparse.Namespace) -> int:
    from flows.backtest import backtest

    scoring_rules_ok(args.rules)

    return run_flow(args, backtest, _human_backtest)


def _backtest_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--rules", help="rules file or block:NAME (default rules/scoring.yaml)")
    command.add_argument("--now", type=timestamp)
    command.add_argument("--json", action="store_true")


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

    return run_flow(
        args,
        learn,
        _human_learn,
        refused_code=EXIT_BAD_INPUT,  # too few leads to learn from: the input, not a gate
    )


def _learn_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", required=True, help="where to write the rules file")
    command.add_argument(
        "--exclude", nargs="*", default=[], help="columns not to learn from (leaks)"
    )
    command.add_argument("--seed", type=int, default=7)
    command.add_argument("--now", type=timestamp)
    command.add_argument("--json", action="store_true")


def cmd_explain(args: argparse.Namespace) -> int:
    from leadflow import store
    from leadflow.scoring.decide import explain_lead

    store.upgrade()
    with store.get_engine().connect() as conn:
        lead_id = _lead_id(conn, args.lead_id)
        data = explain_lead(conn, lead_id) if lead_id is not None else None
        if data is not None:
            from leadflow.routing.hop import explain_routing

            data["routing"] = explain_routing(conn, lead_id)
    if data is None:
        from leadflow.quarantine import mask
        from leadflow.settings import database_description

        return fail(
            f"no lead with id, email or external id {mask(args.lead_id)!r} "
            f"in {database_description()}"
        )
    emit(args, data, _human_explain)
    return EXIT_OK


def _explain_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("lead_id", help="the lead's id, email or external id")
    command.add_argument("--json", action="store_true")


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


COMMANDS = (
    Command(
        "run",
        cmd_run,
        "run the pipeline's hops on whatever is waiting",
        _run_arguments,
        DATABASE + RULES + HOPS + ("LEADFLOW_NOTIFIER", "LEADFLOW_REPS_FILE") + PREFECT,
    ),
    Command(
        "enrich",
        cmd_enrich,
        "run the enrichment hop alone on captured leads",
        _enrich_arguments,
        DATABASE + RULES + HOPS + PREFECT,
    ),
    Command(
        "score",
        cmd_score,
        "score enriched leads (and leads with new engagement)",
        _score_arguments,
        DATABASE + RULES + HOPS + PREFECT,
    ),
    Command(
        "rescore",
        cmd_rescore,
        "score leads again after a rules change; show the diff",
        _rescore_arguments,
        DATABASE + RULES + HOPS + PREFECT,
    ),
    Command(
        "backtest",
        cmd_backtest,
        "score leads with known outcomes and measure the rules",
        _backtest_arguments,
        DATABASE + RULES + PREFECT,
    ),
    Command(
        "learn",
        cmd_learn,
        "learn a rules file from leads with known outcomes",
        _learn_arguments,
        DATABASE + RULES + PREFECT,
    ),
    Command("explain", cmd_explain, "why a lead has its score", _explain_arguments, DATABASE),
)
