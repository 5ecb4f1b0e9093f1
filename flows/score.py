"""When leads are scored.

``score``: enriched leads get their first score; nurturing or MQL leads with engagement
newer than their score are scored again. ``rescore``: on demand after a rules change, over
a scope of leads, as a dry run or applied; always produces a diff. The hops are declared in
``leadflow/scoring/hop.py``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed, State

from leadflow.scoring import hop
from leadflow.scoring.replay import Diff, diff_markdown
from leadflow.settings import get_settings
from tasks import hops as hop_tasks
from tasks import rules_check
from tasks import scoring as scoring_tasks
from tasks.scoring import biggest_movers


@flow(name="score", flow_run_name=hop_tasks.run_name("score"))
def score(
    now: datetime | None = None,
    database_url: str | None = None,
    rules: str | None = None,
    batch_size: int | None = None,
    max_quarantine_rate: float | None = None,
) -> State:
    """Score enriched leads; rescore nurturing/MQL leads with new engagement."""
    started = time.monotonic()
    loaded, refused = rules_check.loaded(
        scoring_tasks.load_rules.fn, rules
    )  # before anything moves
    if refused:
        return refused
    rule_set, version, text = loaded
    database_url = database_url or get_settings().database_url
    now = now or datetime.now(UTC)
    # Events up to here count as seen by this run's scores; newer ones wait for the next run.
    watermark = scoring_tasks.event_watermark(database_url)
    context = hop.ScoreContext(rule_set, version, text, mode="new", watermark=watermark)
    options: dict[str, Any] = dict(
        database_url=database_url,
        now=now,
        batch_size=batch_size,
        max_quarantine_rate=max_quarantine_rate,
    )
    runs = {"new": hop_tasks.drain(hop.SCORE_NEW, context, **options)}
    if not runs["new"].failure:
        candidates = scoring_tasks.engaged_candidates(database_url, watermark)
        engaged = replace(context, mode="engaged")
        runs["engaged"] = hop_tasks.drain(
            hop.SCORE_ENGAGED, engaged, candidates=candidates, **options
        )
    summary = hop.summarise(version, runs)
    summary["seconds"] = round(time.monotonic() - started, 3)
    failure = next((r.failure for r in runs.values() if r.failure), None)
    if failure:
        return Failed(message=failure, data=summary)
    return Completed(
        message=f"scored {summary['scored']} new and {summary['rescored_engaged']} with new "
        f"engagement: to mql {summary['mql']}, nurturing {summary['nurturing']}, "
        f"disqualified {summary['disqualified']}",
        data=summary,
    )


@flow(name="rescore", flow_run_name=hop_tasks.run_name("rescore"))
def rescore(
    rules: str | None = None,
    scope: str = "all",
    dry_run: bool = True,
    now: datetime | None = None,
    database_url: str | None = None,
    batch_size: int | None = None,
    top_movers: int = 20,
) -> State:
    """Score leads again with ``rules`` (a path or block:NAME) over ``scope``; report the diff
    (temperature transitions, new and lost MQLs, biggest movers and the rules that moved
    them) and, unless ``dry_run``, apply it in the same pass."""
    started = time.monotonic()
    loaded, refused = rules_check.loaded(
        scoring_tasks.load_rules.fn, rules
    )  # before anything moves
    if refused:
        return refused
    rule_set, version, text = loaded
    database_url = database_url or get_settings().database_url
    now = now or datetime.now(UTC)
    statuses, condition = hop.parse_scope(scope)
    warnings = scoring_tasks.rule_warnings(database_url, rule_set)
    context = hop.ScoreContext(rule_set, version, text, mode="rescore", condition=condition)
    diff = Diff(top_movers, applied=not dry_run)
    run = hop_tasks.drain(
        hop.rescore_hop(statuses),
        context,
        database_url=database_url,
        now=now,
        batch_size=batch_size,
        dry_run=dry_run,
        on_batch=lambda o: diff.add(o.report),
    )
    summary = {
        "version": version,
        "scope": scope,
        "dry_run": dry_run,
        "rescored": run.stats.get("scored", 0),
        "quarantined": run.quarantined,
        **diff.as_dict(biggest_movers(database_url, diff)),
        "warnings": warnings + hop.hit_warnings(run),
        "seconds": round(time.monotonic() - started, 3),
    }
    create_markdown_artifact(
        key="rescore-diff",
        markdown=diff_markdown(summary),
        description=f"Rescore with rules {version} ({'dry run' if dry_run else 'applied'})",
    )
    if run.failure:
        return Failed(message=run.failure, data=summary)
    return Completed(
        message=f"{'dry run: ' if dry_run else ''}{summary['rescored']} leads rescored with "
        f"{version}: {summary['new_mql']} new MQLs, {summary['lost_mql']} lost",
        data=summary,
    )
