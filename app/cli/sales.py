"""`leadflow` commands: after routing: SLA checks, nurture ticks, recycling."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import (
    DATABASE,
    PREFECT,
    RULES,
    Command,
    delivery_line,
    dumps,
    run_flow,
    timestamp,
)


def _human_sla(data: dict[str, Any]) -> str:
    if "gate" in data:
        return "SLA gate failed; nothing was recorded: " + dumps(data["gate"])
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

    return run_flow(args, sla, _human_sla)


def _sla_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--rules", help="SLA policies (default rules/sla.yaml)")
    command.add_argument(
        "--routing", help="routing rules for reassignment (default rules/routing.yaml)"
    )
    command.add_argument("--reps", help="reps CSV replacing the routing rules' reps")
    command.add_argument("--notifier", help="block:NAME[,block:NAME] (default LEADFLOW_NOTIFIER)")
    command.add_argument("--now", type=timestamp, help="check as of this time (default: now)")
    command.add_argument("--json", action="store_true")


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
    from leadflow.nurture.plan import load_context

    load_context(args.rules)  # a typo: one line, exit 2, no flow
    from flows.nurture import nurture

    return run_flow(args, nurture, _human_nurture)


def _nurture_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--rules", help="cadences (default rules/cadences.yaml)")
    command.add_argument(
        "--notifier", help="block:NAME or maildir:PATH (default LEADFLOW_NOTIFIER)"
    )
    command.add_argument("--now", type=timestamp, help="tick as of this time (default: now)")
    command.add_argument("--json", action="store_true")


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
    from leadflow.recycle.hop import load_context

    load_context(args.rules)  # a typo: one line, exit 2, no flow
    from flows.recycle import recycle

    return run_flow(args, recycle, _human_recycle)


def _recycle_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--rules", help="recycling policy (default rules/recycle.yaml)")
    command.add_argument("--now", type=timestamp, help="as of this time (default: now)")
    command.add_argument("--json", action="store_true")


COMMANDS = (
    Command(
        "sla",
        cmd_sla,
        "check SLA timers: warn, record breaches, escalate, reassign",
        _sla_arguments,
        DATABASE + RULES + ("LEADFLOW_NOTIFIER", "LEADFLOW_REPS_FILE") + PREFECT,
    ),
    Command(
        "nurture",
        cmd_nurture,
        "one nurture tick: enrol, send due touches, exit, finish",
        _nurture_arguments,
        DATABASE + RULES + ("LEADFLOW_NOTIFIER", "LEADFLOW_PUBLIC_URL") + PREFECT,
    ),
    Command(
        "recycle",
        cmd_recycle,
        "send stalled leads back to nurture; report leakage",
        _recycle_arguments,
        DATABASE + RULES + PREFECT,
    ),
)
