"""The scoring hops, declared on the shared runner.

- ``SCORE_NEW``: enriched leads get their first score and become ``mql`` (at or over the
  threshold, or fast-tracked), ``nurturing`` or ``disqualified``.
- ``SCORE_ENGAGED``: nurturing or MQL leads with engagement newer than their score are scored
  again (nurturing ones that now qualify become MQL; an MQL is never demoted by engagement).
- ``RESCORE``: on demand after a rules change, over a scope, dry run or applied, in one pass
  (each lead scored once); leads a rep owns keep their status.

The pure part is ``score_batch``; where a lead goes is ``next_status``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import pandas as pd
import yaml
from sqlalchemy import Connection, func, select

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.config import ConfigError, parse
from leadflow.lifecycle import Status
from leadflow.queue import Strategy
from leadflow.rules.conditions import Condition, condition_mask
from leadflow.runner import Hop, HopResult, HopRun
from leadflow.scoring import decide as scoring
from leadflow.scoring.rules import ScoringRules


@dataclass(frozen=True)
class ScoreContext:
    """One scoring run: the rules (and their text and version), the mode, and for
    ``engaged`` the newest event id the run has seen."""

    rules: ScoringRules
    version: str
    text: str
    mode: str = "new"  # new | engaged | rescore
    watermark: int | None = None
    condition: Condition | None = None  # rescore scope's condition


def next_status(current: str, decision: str, mode: str) -> str:
    """Where a lead goes given what the rules decided. ``mode``: new | engaged | rescore."""
    if current == Status.ENRICHED.value:
        return decision
    if current not in lifecycle.MOVABLE_BY_SCORE:
        return current  # owned by a rep (or recycled): the score changes, the status does not
    if decision == Status.DISQUALIFIED.value:
        return decision
    if current == Status.MQL.value and mode != "rescore":
        return current  # new engagement never demotes an MQL; only a deliberate rescore does
    return decision


def load_events(
    conn: Connection, leads: pd.DataFrame, context: ScoreContext, now: datetime
) -> pd.DataFrame:
    """The engagement events the rules can use for the batch's leads."""
    return scoring.load_events(conn, context.rules, leads["id"].tolist(), now)


def score_batch(
    leads: pd.DataFrame, events: pd.DataFrame, context: ScoreContext, now: datetime
) -> HopResult:
    """The hop's pure function: score a batch, decide each lead's status, and say why."""
    if context.condition is not None and len(leads):
        leads = leads[condition_mask(context.condition, leads)].reset_index(drop=True)
    result = scoring.score_leads(context.rules, leads, events, now)
    to_status = [
        next_status(s, d, context.mode)
        for s, d in zip(leads["status"], result["decision"], strict=True)
    ]
    changes = pd.DataFrame(
        {
            "id": leads["id"].to_numpy(),
            "from_status": leads["status"].to_numpy(),
            "to_status": to_status,
            "score": result["score"].to_numpy(),
            "temperature": result["temperature"].to_numpy(),
            "score_version": context.version,
            "scored_at": pd.Timestamp(now),
            "reason": scoring.decision_reason(result, context.rules, context.version),
        }
    )
    if context.watermark is not None:
        changes["scored_event_id"] = context.watermark
    history = scoring.history_rows(
        leads["id"], result, context.version, now, result["decision"], None
    )
    report = None
    if context.mode == "rescore":
        report = pd.DataFrame(
            {
                "id": leads["id"].to_numpy(),
                "status": leads["status"].to_numpy(),
                "old_temperature": leads["temperature"].to_numpy(),
                "old_score": leads["score"].to_numpy(),
                "temperature": result["temperature"].to_numpy(),
                "score": result["score"].to_numpy(),
                "decision": result["decision"].to_numpy(),
                "to_status": to_status,
                "fired": result["fired"].to_numpy(),
            }
        )
    return HopResult(
        changes=changes,
        checked=scoring.gate_frame(leads["id"], result, context.version),
        rows={"lead_scores": history},
        stats={
            "scored": len(leads),
            "hot": int((result["temperature"] == "hot").sum()),
            **{f"hits:{name}": count for name, count in result.attrs["hits"].items()},
        },
        report=report,
    )


def record_rules(conn: Connection, result: HopResult, context: ScoreContext, _held: set) -> None:
    """Keep the text of every rule set that scored anything, under its version."""
    if len(result.changes):
        scoring.record_rule_set(conn, context.rules, context.version, context.text)


def _columns(context: ScoreContext) -> list[Any]:
    return scoring.lead_columns(context.rules)


SCORE_NEW = Hop(
    name="score",
    inputs=(Status.ENRICHED,),
    suite=scoring.SUITE,
    # Id ranges: a pure hop written in its claim's transaction; no row locks to write.
    strategy=Strategy.ID_RANGE,
    columns=_columns,
    fetch=load_events,
    transform=score_batch,
    persist=record_rules,
)
SCORE_ENGAGED = replace(
    SCORE_NEW,
    inputs=tuple(sorted(lifecycle.MOVABLE_BY_SCORE)),
    strategy=Strategy.LOCKED_IDS,  # sparse candidates: leads with newer engagement
)
RESCORE = replace(SCORE_NEW, name="rescore", inputs=tuple(sorted(lifecycle.SCORED)))


# --------------------------------------------------------------------------- run inputs


def hit_warnings(run: HopRun) -> list[str]:
    """ "rule X fired on 0 leads" for each rule that fired on no lead of the run."""
    hits = {k[len("hits:") :]: int(v) for k, v in run.stats.items() if k.startswith("hits:")}
    return scoring.never_fired(hits) if run.stats.get("scored") else []


def parse_scope(scope: str) -> tuple[list[str], Condition | None]:
    """``all`` | ``status:a,b`` | ``where:<condition as YAML/JSON>`` -> (statuses, condition)."""
    scored = sorted(lifecycle.SCORED)
    if scope in ("", "all"):
        return scored, None
    if scope.startswith("status:"):
        statuses = [s.strip() for s in scope[7:].split(",") if s.strip()]
        unknown = sorted(set(statuses) - set(scored))
        if unknown or not statuses:
            raise ConfigError(
                f"scope: unknown or unscored status(es) {unknown}; use any of {scored}"
            )
        return statuses, None
    if scope.startswith("where:"):
        try:
            data = yaml.safe_load(scope[6:])
        except yaml.YAMLError as exc:
            raise ConfigError(f"scope: not valid YAML/JSON: {exc}") from exc
        return scored, parse(Condition, data, "scope")
    raise ConfigError(f"scope {scope!r}: use all, status:<a,b>, or where:<condition>")


def rescore_hop(statuses: list[str]) -> Hop:
    """The rescore declaration over a scope's statuses."""
    return replace(RESCORE, inputs=tuple(Status(s) for s in statuses))


def summarise(version: str, runs: dict[str, HopRun]) -> dict[str, Any]:
    """The score run's summary from its ``new`` and ``engaged`` passes."""
    summary: dict[str, Any] = {
        "version": version,
        "scored": runs["new"].stats.get("scored", 0) if "new" in runs else 0,
        "rescored_engaged": runs["engaged"].stats.get("scored", 0) if "engaged" in runs else 0,
        "quarantined": sum(r.quarantined for r in runs.values()),
        "hot": sum(r.stats.get("hot", 0) for r in runs.values()),
    }
    for status in (Status.MQL, Status.NURTURING, Status.DISQUALIFIED):
        summary[status.value] = sum(r.moved.get(status.value, 0) for r in runs.values())
    return summary


def engaged_candidates(database_url: str, watermark: int) -> list[int]:
    """Nurturing and MQL leads with engagement newer than their score, up to ``watermark``,
    in id order."""
    leads, events = t.leads, t.engagement_events
    movable = sorted(lifecycle.MOVABLE_BY_SCORE)
    with store.get_engine(database_url).connect() as conn:
        bound = conn.execute(
            select(func.coalesce(func.min(func.coalesce(leads.c.scored_event_id, 0)), 0)).where(
                leads.c.status.in_(movable)
            )
        ).scalar_one()
        query = (
            select(leads.c.id)
            .distinct()
            .join(events, events.c.lead_id == leads.c.id)
            .where(
                events.c.id > bound,
                events.c.id <= watermark,
                events.c.id > func.coalesce(leads.c.scored_event_id, 0),
                leads.c.status.in_(movable),
            )
            .order_by(leads.c.id)
        )
        return list(conn.execute(query).scalars())
