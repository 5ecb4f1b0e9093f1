"""How a lead is scored: the rules applied to a batch of leads and their engagement.

Pure and vectorised: a DataFrame of leads (one column per field the rules read) and a
DataFrame of engagement events in, one row per lead out, with the score, the temperature,
the decision (mql / nurturing / disqualified) and every rule's contribution, so that any
score can be explained and any rules change diffed.

Conventions: ``range: [min, max]`` is min <= value < max; engagement decays by half every
``half_life_days`` before the scoring time ``now``, and events after ``now`` do not count.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import func, select

from leadflow.lifecycle import Status
from leadflow.rules.conditions import Condition, condition_mask
from leadflow.scoring.rules import ScoringRules

DAY = np.timedelta64(1, "D")


# --------------------------------------------------------------------------- points


def engagement_counts(events: pd.DataFrame, ids: pd.Series, now: datetime) -> pd.DataFrame:
    """``engagement.<type>``: events of each type per lead up to ``now`` (for conditions)."""
    upto = events[events["occurred_at"] <= pd.Timestamp(now)]
    counts = upto.groupby(["lead_id", "event_type"]).size().unstack(fill_value=0)
    counts.columns = [f"engagement.{c}" for c in counts.columns]
    return counts.reindex(ids.to_numpy(), fill_value=0).set_axis(ids.index)


def fit_points(rules: ScoringRules, leads: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            rule.name: np.where(condition_mask(rule.when, leads), float(rule.points), 0.0)
            for rule in rules.fit
        },
        index=leads.index,
    )


def engagement_points(
    rules: ScoringRules, events: pd.DataFrame, ids: pd.Series, now: datetime
) -> pd.DataFrame:
    """Per lead and engagement rule: decayed points, capped."""
    out = pd.DataFrame(index=ids.index)
    if not rules.engagement:
        return out
    moment = pd.Timestamp(now)
    usable = events[events["occurred_at"] <= moment]
    age_days = ((moment - usable["occurred_at"]) / pd.Timedelta(days=1)).to_numpy(dtype="float64")
    kinds = usable["event_type"].to_numpy()
    urls = usable["url"].astype("str") if "url" in usable.columns else None
    lead_ids = usable["lead_id"].to_numpy()
    position = pd.Index(ids.to_numpy()).get_indexer(lead_ids)
    for rule in rules.engagement:
        hit = kinds == rule.event
        if rule.url is not None and urls is not None:
            hit &= urls.str.contains(rule.url, regex=True, na=False).to_numpy(dtype=bool)
        weight = np.ones(hit.sum())
        if rule.half_life_days:
            weight = np.power(0.5, age_days[hit] / rule.half_life_days)
        totals = np.bincount(position[hit], weights=weight * rule.points, minlength=len(ids))
        if rule.cap is not None:
            totals = (
                np.minimum(totals, rule.cap) if rule.points > 0 else np.maximum(totals, rule.cap)
            )
        out[rule.name] = totals
    return out


# --------------------------------------------------------------------------- scores


class Decision:
    """What the rules decide, named as the lifecycle statuses they lead to."""

    MQL = Status.MQL.value
    NURTURING = Status.NURTURING.value
    DISQUALIFIED = Status.DISQUALIFIED.value


def _first_rule(rules: tuple, frame: pd.DataFrame) -> pd.Series:
    """The name of the first of ``rules`` whose condition holds, per row (else None)."""
    out = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for rule in rules:
        hit = condition_mask(rule.when, frame) & out.isna().to_numpy()
        out[hit] = rule.name
    return out


def contributions_json(points: pd.DataFrame) -> list[str]:
    """Per row, ``{"rule": points, ...}`` for the rules that contributed (non-zero).

    Built column by column with Arrow string kernels: no Python loop over rows.
    """
    text = pa.array([""] * len(points), pa.string())
    for name in points.columns:
        values = np.round(points[name].to_numpy(dtype="float64"), 2)
        nonzero_mask = values != 0
        if not nonzero_mask.any():
            continue
        nonzero = pa.array(nonzero_mask)
        distinct = np.unique(values[nonzero_mask])
        if len(distinct) == 1:  # a fit rule: the same points wherever it fires
            part = pa.scalar(f'"{name}": {distinct[0]:g}')
        else:
            part = pc.binary_join_element_wise(
                f'"{name}": ', pc.cast(pa.array(values), pa.string()), ""
            )
        joined = pc.if_else(pc.equal(text, ""), part, pc.binary_join_element_wise(text, part, ", "))
        text = pc.if_else(nonzero, joined, text)
    return pc.binary_join_element_wise("{", text, "}", "").to_pylist()


def score_leads(
    rules: ScoringRules, leads: pd.DataFrame, events: pd.DataFrame, now: datetime
) -> pd.DataFrame:
    """Score a batch. ``leads`` has ``id`` and the fields the rules read; ``events`` has
    lead_id, event_type, occurred_at (UTC) and url. Returns, per lead (same index): raw,
    score, temperature, mql, fast_track, disqualify, decision, fired (JSON text)."""
    ids = leads["id"]
    frame = leads
    wanted = [f for f in rules.fields() if f.startswith("engagement.") and f not in leads.columns]
    if wanted:
        counts = engagement_counts(events, ids, now)
        frame = pd.concat([leads, counts[[c for c in counts.columns if c in wanted]]], axis=1)
    points = pd.concat(
        [fit_points(rules, frame), engagement_points(rules, events, ids, now)], axis=1
    )
    raw = points.sum(axis=1) if len(points.columns) else pd.Series(0.0, index=leads.index)
    low, high = rules.bounds()
    score = ((raw - low) / (high - low) * 100).clip(0, 100).round(2)
    temperature = np.select(
        [score >= rules.bands.hot, score >= rules.bands.warm], ["hot", "warm"], default="cold"
    )
    fast = _first_rule(rules.fast_track, frame)
    disqualify = _first_rule(rules.disqualify, frame)
    mql = (score >= rules.mql_threshold).to_numpy() | fast.notna().to_numpy()
    decision = np.where(
        disqualify.notna(), Decision.DISQUALIFIED, np.where(mql, Decision.MQL, Decision.NURTURING)
    )
    result = pd.DataFrame(
        {
            "raw": raw.round(4),
            "score": score,
            "temperature": temperature,
            "mql": mql,
            "fast_track": fast,
            "disqualify": disqualify,
            "decision": decision,
            "fired": contributions_json(points),
        },
        index=leads.index,
    )
    result.attrs["hits"] = rule_hits(rules, points, fast, disqualify)
    return result


def rule_hits(
    rules: ScoringRules, points: pd.DataFrame, fast: pd.Series, disqualify: pd.Series
) -> dict[str, int]:
    """How many leads of the batch each rule fired on (0 included: a rule that never fires
    is usually a typo, e.g. an attribute no lead carries)."""
    hits = {
        rule.name: 0
        for rule in (*rules.fit, *rules.engagement, *rules.fast_track, *rules.disqualify)
    }
    for name in points.columns:
        hits[name] = int((points[name].to_numpy(dtype="float64") != 0).sum())
    for column in (fast, disqualify):
        for name, count in column.value_counts().items():
            hits[str(name)] = int(count)
    return hits


def never_fired(hits: dict[str, int]) -> list[str]:
    """The rules that fired on no lead, as warnings people read."""
    return [f"rule {name} fired on 0 leads" for name, count in hits.items() if count == 0]


def unknown_attributes(conn: Any, rules: ScoringRules, sample: int = 10_000) -> list[str]:
    """Warnings for rules reading ``attributes.<key>`` that none of the newest ``sample``
    leads carry (checked at load: a typo'd key would otherwise just never fire)."""
    from leadflow import tables as t

    wanted = sorted(f for f in rules.fields() if f.startswith("attributes."))
    if not wanted:
        return []
    leads = t.leads
    rows = conn.execute(
        select(leads.c.attributes)
        .where(leads.c.attributes.is_not(None))
        .order_by(leads.c.id.desc())
        .limit(sample)
    ).scalars()
    seen: set[str] = set()
    for value in rows:
        data = json.loads(value) if isinstance(value, str) else value
        if isinstance(data, dict):
            seen.update(k for k, v in data.items() if v is not None)
    if not seen:
        return []  # no leads yet: nothing to compare with
    return [
        f"rules read {field}, which none of the {sample:,} newest leads carry"
        for field in wanted
        if field.split(".", 1)[1] not in seen
    ]


def decision_reason(result: pd.DataFrame, rules: ScoringRules, version: str) -> list[str]:
    """Why each lead got its decision, in words for the ledger (vectorised)."""
    score = pd.Series(
        pc.cast(pa.array(result["score"].to_numpy(dtype="float64")), pa.string()),
        index=result.index,
        dtype="str",
    )
    threshold = f"{rules.mql_threshold:g}"
    tail = f" (rules {version})"
    over = "score " + score + f" >= MQL threshold {threshold}" + tail
    under = "score " + score + f" < MQL threshold {threshold}" + tail
    fast = "fast track: " + result["fast_track"].astype("str") + "; score " + score + tail
    disqualified = "disqualified by rule " + result["disqualify"].astype("str") + tail
    reason = np.where(
        result["decision"] == Decision.DISQUALIFIED,
        disqualified,
        np.where(
            result["fast_track"].notna(),
            fast,
            np.where(result["decision"] == Decision.MQL, over, under),
        ),
    )
    return reason.tolist()


def parse_fired(value: object) -> dict[str, float]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        return json.loads(value)
    return {}


# --------------------------------------------------------------------------- store I/O

SUITE = "scored"


def rule_source(spec: str | None) -> tuple[ScoringRules, str, str]:
    """Rules from a file path, or ``block:NAME`` (a saved rules block); default
    ``rules/scoring.yaml``. Returns (rules, version, text)."""
    from blocks.resolve import block_name
    from leadflow import config
    from leadflow.scoring.rules import load_rules, parse_rules
    from leadflow.settings import get_settings

    if name := block_name(spec):
        from blocks import resolve
        from blocks.rules import ScoringRulesBlock

        text = resolve.load(name, (ScoringRulesBlock,), "scoring rules").text
        return parse_rules(text, spec), config.content_version(text), text
    return load_rules(spec or get_settings().rules_dir / "scoring.yaml")


def record_rule_set(conn: Any, rules: ScoringRules, version: str, text: str) -> None:
    """Keep the text of every rule set that scored anything, under its version."""
    from leadflow import store
    from leadflow import tables as t

    store.insert_if_absent(
        conn,
        t.rule_sets,
        dict(
            version=version, kind="scoring", name=rules.name, text=text, created_at=store.utcnow()
        ),
    )


def lead_columns(rules: ScoringRules) -> list[Any]:
    """The columns a scoring batch reads: identity, current score, and what the rules use."""
    from leadflow import tables as t

    leads = t.leads
    wanted = ["id", "status", "score", "temperature", "score_version"]
    columns = [leads.c[name] for name in wanted]
    for field in sorted(rules.fields()):
        if field.startswith("engagement.") or field in wanted:
            continue
        column = t.lead_column(field)
        columns.append(column if column is not None else leads.c[field])  # unknown: KeyError
    return columns


def load_events(
    conn: Any, rules: ScoringRules, lead_ids: Sequence[int], now: datetime
) -> pd.DataFrame:
    """The engagement events the rules can use for these leads, up to ``now``."""
    from leadflow import store
    from leadflow import tables as t

    events = t.engagement_events
    kinds = {rule.event for rule in rules.engagement} | {
        f.split(".", 1)[1] for f in rules.fields() if f.startswith("engagement.")
    }
    columns = [events.c.lead_id, events.c.event_type, events.c.occurred_at, events.c.url]
    if not kinds:
        return pd.DataFrame(columns=[c.key for c in columns])
    frame = store.read_frame_by_ids(
        conn,
        columns,
        events.c.lead_id,
        lead_ids,
        where=events.c.event_type.in_(sorted(kinds)) & (events.c.occurred_at <= now),
    )
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    return frame


def event_watermark(conn: Any) -> int:
    """The newest engagement event id: events above it arrived after this scoring began."""
    from leadflow import tables as t

    return int(
        conn.execute(select(func.coalesce(func.max(t.engagement_events.c.id), 0))).scalar_one()
    )


def history_rows(
    ids: pd.Series,
    result: pd.DataFrame,
    version: str,
    now: datetime,
    decisions: pd.Series,
    flow_run_id: str | None,
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lead_id": ids.to_numpy(),
            "version": version,
            "score": result["score"].to_numpy(),
            "raw_points": result["raw"].to_numpy(),
            "temperature": result["temperature"].to_numpy(),
            "decision": decisions.to_numpy(),
            "fired": result["fired"].to_numpy(),
            "scored_at": pd.Timestamp(now),
            "flow_run_id": flow_run_id,
        }
    )


def gate_frame(ids: pd.Series, result: pd.DataFrame, version: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ids.to_numpy(),
            "score": result["score"].to_numpy(),
            "temperature": result["temperature"].to_numpy(),
            "score_version": version,
        },
    )


# --------------------------------------------------------------------------- explain


def describe_condition(condition: Condition) -> str:
    """A condition in words, as ops would write it."""
    if condition.all is not None:
        return " and ".join(f"({describe_condition(c)})" for c in condition.all)
    if condition.any is not None:
        return " or ".join(f"({describe_condition(c)})" for c in condition.any)
    if condition.not_ is not None:
        return f"not ({describe_condition(condition.not_)})"
    name = condition.field
    if condition.equals is not None:
        return f"{name} = {condition.equals}"
    if condition.in_ is not None:
        return f"{name} in {list(condition.in_)}"
    if condition.range is not None:
        low, high = condition.range
        if low is None:
            return f"{name} < {high:g}"
        if high is None:
            return f"{name} >= {low:g}"
        return f"{low:g} <= {name} < {high:g}"
    if condition.regex is not None:
        return f"{name} matches /{condition.regex}/"
    if condition.exists is not None:
        return f"{name} {'is' if condition.exists else 'is not'} set"
    return f"{name} {'is' if condition.missing else 'is not'} missing"


def explain_lead(conn: Any, lead_id: int) -> dict[str, Any] | None:
    """Why a lead has its score: the rules that fired with their points, from the latest
    applied score and the text of the rule set that produced it."""
    lead = _explained_lead(conn, lead_id)
    if lead is None:
        return None
    history = _score_history(conn, lead_id)
    out: dict[str, Any] = {"lead": dict(lead), "scores": len(history)}
    out["ledger"] = _lead_ledger(conn, lead_id)
    if not history:
        return out
    latest = dict(history[0])
    described, bounds = _described_rules(conn, latest["version"])
    out["latest"] = _latest_score(latest, described, bounds)
    return out


def _explained_lead(conn: Any, lead_id: int) -> Any:
    """The lead's status, score and the fields an explanation shows (None if no such lead)."""
    from leadflow import tables as t

    leads = t.leads
    return (
        conn.execute(
            select(
                leads.c.id,
                leads.c.status,
                leads.c.score,
                leads.c.temperature,
                leads.c.score_version,
                leads.c.company,
                leads.c.seniority,
                leads.c.email_type,
            ).where(leads.c.id == lead_id)
        )
        .mappings()
        .first()
    )


def _score_history(conn: Any, lead_id: int) -> list[Any]:
    """The lead's scores, latest first."""
    from leadflow import tables as t

    scores = t.lead_scores
    return (
        conn.execute(select(scores).where(scores.c.lead_id == lead_id).order_by(scores.c.id.desc()))
        .mappings()
        .all()
    )


def _lead_ledger(conn: Any, lead_id: int) -> list[dict[str, Any]]:
    """The lead's lifecycle events in order (a merge's details name the fields it changed)."""
    from leadflow import tables as t

    events = t.lead_events
    ledger = (
        conn.execute(
            select(
                events.c.kind,
                events.c.from_status,
                events.c.to_status,
                events.c.reason,
                events.c.occurred_at,
                events.c.details,  # a merge's details name the fields it changed
            )
            .where(events.c.lead_id == lead_id)
            .order_by(events.c.id)
        )
        .mappings()
        .all()
    )
    return [dict(row) for row in ledger]


def _described_rules(conn: Any, version: Any) -> tuple[dict[str, str], tuple[float, float] | None]:
    """Each rule of the rule set ``version`` described in words, and the set's score bounds
    (nothing when its text is not stored)."""
    from leadflow import tables as t
    from leadflow.scoring.rules import parse_rules

    rule_sets = t.rule_sets
    text = conn.execute(select(rule_sets.c.text).where(rule_sets.c.version == version)).scalar()
    described: dict[str, str] = {}
    bounds: tuple[float, float] | None = None
    if text:
        rules = parse_rules(text, f"rule set {version}")
        bounds = rules.bounds()
        for rule in rules.fit:
            described[rule.name] = describe_condition(rule.when)
        for rule in rules.engagement:
            decay = f", half-life {rule.half_life_days:g} days" if rule.half_life_days else ""
            where = f" on {rule.url}" if rule.url else ""
            described[rule.name] = (
                f"{rule.event}{where}: {rule.points:g} each, cap {rule.cap}{decay}"
            )
    return described, bounds


def _latest_score(
    latest: dict[str, Any], described: dict[str, str], bounds: tuple[float, float] | None
) -> dict[str, Any]:
    """The latest score with the rules that fired, biggest effect first."""
    fired = parse_fired(latest["fired"])
    return {
        "version": latest["version"],
        "score": latest["score"],
        "raw_points": latest["raw_points"],
        "temperature": latest["temperature"],
        "decision": latest["decision"],
        "scored_at": latest["scored_at"],
        "bounds": bounds,
        "rules": sorted(
            (
                {"rule": name, "points": points, "condition": described.get(name, "")}
                for name, points in fired.items()
            ),
            key=lambda r: -abs(r["points"]),
        ),
    }
