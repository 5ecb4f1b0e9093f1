"""The scoring concern's Prefect layer: its tasks, events and artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from leadflow import store
from leadflow.scoring import decide as scoring
from leadflow.scoring import hop as hop_impl
from leadflow.scoring import replay as replay_impl
from leadflow.scoring.backtest import run_backtest
from leadflow.scoring.learn import fit_rules, load_training
from leadflow.scoring.replay import Diff
from leadflow.scoring.rules import ScoringRules


@task(name="load-rules", cache_policy=NO_CACHE)
def load_rules(spec: str | None) -> tuple[ScoringRules, str, str]:
    """Rules from a path or ``block:NAME`` (default ``rules/scoring.yaml``)."""
    return scoring.rule_source(spec)


@task(name="check-rules-against-leads", cache_policy=NO_CACHE)
def rule_warnings(database_url: str, rules: ScoringRules) -> list[str]:
    """Warnings about rules that read attributes no recent lead carries (logged, returned)."""
    from prefect.logging import get_run_logger

    with store.get_engine(database_url).connect() as conn:
        warnings = scoring.unknown_attributes(conn, rules)
    for warning in warnings:
        get_run_logger().warning(warning)
    return warnings


@task(name="event-watermark", cache_policy=NO_CACHE)
def event_watermark(database_url: str) -> int:
    """The newest engagement event id now: a score records it as seen; later ones are new."""
    with store.get_engine(database_url).connect() as conn:
        return scoring.event_watermark(conn)


@task(name="engaged-candidates", cache_policy=NO_CACHE)
def engaged_candidates(database_url: str, watermark: int) -> list[int]:
    """Nurturing and MQL leads with engagement newer than their score, up to ``watermark``,
    in id order."""
    return hop_impl.engaged_candidates(database_url, watermark)


@task(name="learn-from-history", cache_policy=NO_CACHE)
def learn_from_history(
    database_url: str, now: datetime, exclude: set[str], seed: int
) -> tuple[str | None, dict[str, Any]]:
    """Rules text fitted on leads with known outcomes, and the fit's report; (None, report
    with ``error``) when there are not both won and lost leads to learn from."""
    training = load_training(store.get_engine(database_url), now, exclude)
    if training["outcome"].nunique() < 2:
        return None, {"leads": len(training), "error": "learning needs both won and lost leads"}
    return fit_rules(training, seed=seed)


@task(name="backtest-rules", cache_policy=NO_CACHE)
def backtest_rules(database_url: str, spec: str | None, now: datetime) -> dict[str, Any]:
    """Score every lead with a known outcome with the rules ``spec`` and measure them."""
    rules, version, _ = scoring.rule_source(spec)
    return run_backtest(store.get_engine(database_url), rules, version, now)


@task(name="rescore-movers", cache_policy=NO_CACHE)
def biggest_movers(database_url: str, diff: Diff) -> list[dict[str, Any]]:
    """The biggest movers with the rules that moved them (old contributions from the store).

    After an applied rescore, the "old" score is the one before this rescore's own."""
    return replay_impl.biggest_movers(database_url, diff)
