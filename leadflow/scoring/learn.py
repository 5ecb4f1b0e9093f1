"""Rules learned from history: an interpretable model written out as an ordinary rules file.

Every column the leads carry (mapped fields and ``attributes.*`` alike, plus engagement
counts) becomes a set of levels: numbers (even when they arrived as text) are binned into
ranges, rare categories are grouped into one level, and a missing value is a level of its
own. A regularised logistic regression on those levels gives each level a weight; the
weights, scaled to integer points, become fit rules people can read, edit and backtest.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select

from leadflow import store
from leadflow import tables as t
from leadflow.rules.conditions import as_text
from leadflow.scoring import backtest
from leadflow.scoring import decide as scoring
from leadflow.scoring.rules import EVENT_TYPES, parse_rules

# Never features: identities, free text, and anything the outcome or the pipeline decides.
ALWAYS_EXCLUDED = frozenset(
    {
        "id",
        "email",
        "external_id",
        "first_name",
        "last_name",
        "phone",
        "website",
        "company",
        "company_clean",
        "domain",
        "title",
        "created_at",
        "captured_at",
        "last_seen_at",
        "updated_at",
        "status",
        "status_changed_at",
        "temperature",
        "score",
        "score_version",
        "scored_at",
        "outcome",
        "owner_rep_id",
        "account_owner_rep_id",
        "claimed_by",
        "claim_expires_at",
        "enrichment_notes",
        "enriched_at",
        "enrich_attempted_at",
        "scored_event_id",
        "account_id",
        "timezone",
        "phone_country",
    }
)
LEAD_CANDIDATES = (
    "seniority",
    "department",
    "email_type",
    "industry",
    "employees",
    "revenue",
    "country",
    "region",
    "source",
    "phone_valid",
    "firmographics",
    "account_match",
)
POINTS_SCALE = 25  # the strongest level is worth this many points


@dataclass
class Level:
    """One indicator the model weighs: a condition (as written in the rules file)."""

    feature: str
    label: str
    condition: dict[str, Any]


@dataclass
class FeatureSet:
    levels: list[Level] = field(default_factory=list)
    columns: list[np.ndarray] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def matrix(self) -> np.ndarray:
        return (
            np.column_stack(self.columns).astype(np.float64) if self.columns else np.zeros((0, 0))
        )


def _numeric(values: pd.Series) -> pd.Series | None:
    """The values as numbers if (nearly) all present ones are numbers, text or not."""
    present = values.dropna()
    present = present[present.astype(str).str.strip() != ""]
    if len(present) == 0:
        return None
    numbers = pd.to_numeric(present.astype(str).str.replace(",", "", regex=False), errors="coerce")
    if numbers.notna().mean() < 0.95 or numbers.nunique() < 5:
        return None
    return pd.to_numeric(
        values.astype(object)
        .where(values.notna(), None)
        .astype(str)
        .str.replace(",", "", regex=False),
        errors="coerce",
    )


def _edges(numbers: pd.Series, bins: int) -> list[float]:
    quantiles = np.unique(np.nanquantile(numbers.dropna(), np.linspace(0, 1, bins + 1)[1:-1]))
    return [float(_round_nice(q)) for q in quantiles]


def _round_nice(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    digits = 2 - math.floor(math.log10(abs(value)))
    return round(value, max(digits, 0)) if digits > 0 else round(value, digits)


def build_features(frame: pd.DataFrame, *, min_share: float = 0.01, bins: int = 5) -> FeatureSet:
    """Levels for every usable column of ``frame`` (fields, attributes.*, engagement.*)."""
    features = FeatureSet()
    n = len(frame)
    min_count = max(20, int(min_share * n))
    for name in frame.columns:
        values = frame[name]
        present = values.notna() & (values.astype(str).str.strip() != "")
        if present.mean() == 0:
            features.skipped[name] = "always empty"
            continue
        numbers = (
            _numeric(values)
            if not name.startswith("engagement.")
            else pd.to_numeric(values, errors="coerce")
        )
        if numbers is not None:
            edges = _edges(numbers, bins) if not name.startswith("engagement.") else [1, 2, 4, 8]
            edges = [e for e in edges if numbers.min() < e <= numbers.max()]
            bounds = [None, *edges, None]
            for low, high in itertools.pairwise(bounds):
                mask = numbers.notna().to_numpy().copy()
                if low is not None:
                    mask &= (numbers >= low).fillna(False).to_numpy()
                if high is not None:
                    mask &= (numbers < high).fillna(False).to_numpy()
                if mask.sum() < min_count:
                    continue
                features.levels.append(
                    Level(name, f"{name} in [{low}, {high})", {"field": name, "range": [low, high]})
                )
                features.columns.append(mask)
        else:
            # The same text the scoring engine compares with (true/false, 7 for 7.0).
            text = as_text(values.astype(object).where(present, None))
            counts = text.value_counts()
            kept = [value for value, count in counts.items() if count >= min_count][:30]
            if not kept and counts.empty:
                features.skipped[name] = "no values"
                continue
            if len(counts) > 0.5 * n and len(kept) < 3:
                features.skipped[name] = "an identifier (almost every value differs)"
                continue
            for value in kept:
                features.levels.append(
                    Level(name, f"{name} = {value}", {"field": name, "equals": value})
                )
                features.columns.append((text == value).fillna(False).to_numpy())
            rest = present.to_numpy() & ~text.isin(kept).fillna(False).to_numpy()
            if rest.sum() >= min_count:
                condition = {
                    "all": [{"field": name, "exists": True}, {"not": {"field": name, "in": kept}}]
                }
                features.levels.append(Level(name, f"{name} = other", condition))
                features.columns.append(rest)
        missing = ~present.to_numpy()
        if missing.sum() >= min_count:
            features.levels.append(Level(name, f"{name} missing", {"field": name, "missing": True}))
            features.columns.append(missing)
    return features


def load_training(engine: Engine, now: datetime, exclude: set[str]) -> pd.DataFrame:
    """Leads with a known outcome: candidate fields, every attribute key, engagement counts."""
    leads = t.leads
    wanted = [c for c in LEAD_CANDIDATES if c not in exclude]
    with engine.connect() as conn:
        frame = store.read_frame(
            conn,
            select(leads.c.id, leads.c.outcome, leads.c.attributes, *[leads.c[c] for c in wanted])
            .where(leads.c.outcome.is_not(None))
            .order_by(leads.c.id),
        )
        events = t.engagement_events
        counts = store.read_frame(
            conn,
            select(events.c.lead_id, events.c.event_type, func.count().label("n"))
            .join(leads, leads.c.id == events.c.lead_id)
            .where(leads.c.outcome.is_not(None), events.c.occurred_at <= now)
            .group_by(events.c.lead_id, events.c.event_type),
        )
    attributes = pd.DataFrame(
        [(json.loads(a) if isinstance(a, str) else (a or {})) for a in frame["attributes"]],
        index=frame.index,
    )
    attributes = attributes.drop(
        columns=[c for c in attributes.columns if c.startswith("_")], errors="ignore"
    )
    attributes.columns = [f"attributes.{c}" for c in attributes.columns]
    if len(counts):
        pivot = counts.pivot_table(index="lead_id", columns="event_type", values="n", fill_value=0)
        pivot = pivot.reindex(frame["id"].to_numpy(), fill_value=0)
        pivot.columns = [f"engagement.{c}" for c in pivot.columns]
        engagement = pivot.set_axis(frame.index)
    else:
        engagement = pd.DataFrame(index=frame.index)
    engagement = engagement[[c for c in engagement.columns if c.split(".", 1)[1] in EVENT_TYPES]]
    out = pd.concat([frame.drop(columns=["attributes"]), attributes, engagement], axis=1)
    drop = [
        c
        for c in out.columns
        if c in exclude
        or c.split(".", 1)[-1] in exclude
        or c in ALWAYS_EXCLUDED - {"id", "outcome"}
    ]
    return out.drop(columns=drop)


def fit_rules(
    training: pd.DataFrame, *, seed: int = 7, holdout: float = 0.25, name: str = "learned"
) -> tuple[str, dict[str, Any]]:
    """Fit on part of the history, test on the rest; return (rules YAML text, report)."""
    labels = (training["outcome"] == "won").to_numpy()
    frame = training.drop(columns=["outcome"])
    ids = frame.pop("id")
    features = build_features(frame)
    if not features.levels:
        raise ValueError("no usable columns to learn from")
    matrix = features.matrix()
    weights, model_auc, train, test = _fit_model(matrix, labels, seed=seed, holdout=holdout)
    scale = POINTS_SCALE / max(np.abs(weights).max(), 1e-9)
    points = np.round(weights * scale).astype(int)
    fit, lows, highs = _fit_entries(features, points, scale)
    rules = _rules_document(
        name, len(labels), fit, lows, highs, matrix[train] @ points, labels[train]
    )
    text = _render(rules, features, model_auc, len(train), len(test))
    rules_auc = _rules_auc_held_out(text, frame, ids, test, labels)
    report = {
        "leads": len(labels),
        "won": int(labels.sum()),
        "train": len(train),
        "held_out": len(test),
        "levels": len(features.levels),
        "rules": len(fit),
        "model_auc_held_out": round(model_auc, 4),
        "rules_auc_held_out": round(float(rules_auc), 4) if rules_auc is not None else None,
        "mql_threshold": rules["mql_threshold"],
        "skipped_columns": features.skipped,
        "leakage_warning": model_auc > 0.97,
    }
    text = text.replace(
        "# rules AUC on held-out leads: (pending)",
        f"# rules AUC on held-out leads: {report['rules_auc_held_out']}",
    )
    return text, report


def _fit_model(
    matrix: np.ndarray, labels: np.ndarray, *, seed: int, holdout: float
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """A logistic regression fitted on a stratified share of the leads: its weights, its AUC
    on the held-out rest, and the train and test positions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(labels))
    train, test = train_test_split(positions, test_size=holdout, random_state=seed, stratify=labels)
    model = LogisticRegression(C=0.5, max_iter=2000)
    model.fit(matrix[train], labels[train])
    model_auc = float(roc_auc_score(labels[test], model.decision_function(matrix[test])))
    return model.coef_[0], model_auc, train, test


def _fit_entries(
    features: FeatureSet, points: np.ndarray, scale: float
) -> tuple[list[dict[str, Any]], float, float]:
    """One ``fit`` entry per level with non-zero points, and the lowest and highest raw score
    a lead can get (at most one level of a feature applies to a lead, or none)."""
    fit = []
    lows = highs = 0.0
    by_feature: dict[str, list[int]] = {}
    for level, value in zip(features.levels, points, strict=True):
        by_feature.setdefault(level.feature, []).append(int(value))
        if value == 0:
            continue
        slug = _slug(level.label)
        fit.append(
            {
                "name": slug,
                "when": level.condition,
                "points": int(value),
                "why": f"learned: {level.label} (weight {value / scale:+.3f})",
            }
        )
    for values in by_feature.values():
        # At most one level of a feature applies to a lead, or none (0 points).
        lows += min(0, *values)
        highs += max(0, *values)
    if highs <= lows:
        highs = lows + 1
    return fit, lows, highs


def _rules_document(
    name: str,
    leads: int,
    fit: list[dict[str, Any]],
    lows: float,
    highs: float,
    raw_train: np.ndarray,
    labels_train: np.ndarray,
) -> dict[str, Any]:
    """The rules as a document: the fit entries, normalisation to 0-100, bands at the
    training scores' 90th and 60th percentiles, and the MQL threshold with the best F1."""
    score_train = (raw_train - lows) / (highs - lows) * 100
    threshold = _best_threshold(score_train, labels_train)
    hot = float(np.percentile(score_train, 90))
    warm = float(np.percentile(score_train, 60))
    if not warm < hot:
        hot, warm = max(hot, warm + 1), min(warm, hot - 1)
    return {
        "name": name,
        "description": f"Learned from {leads} leads with known outcomes; edit, backtest, then use.",
        "fit": fit,
        "normalise": {"min": float(lows), "max": float(highs)},
        "bands": {"hot": round(min(hot, 100), 1), "warm": round(max(warm, 0), 1)},
        "mql_threshold": round(float(threshold), 1),
    }


def _rules_auc_held_out(
    text: str, frame: pd.DataFrame, ids: pd.Series, test: np.ndarray, labels: np.ndarray
) -> float | None:
    """Score the held-out leads with the rendered rules (as the engine would) and return their
    AUC (None when it is undefined)."""
    parsed = parse_rules(text, "learned rules")
    result = scoring.score_leads(
        parsed,
        frame.assign(id=ids.to_numpy()).iloc[test].reset_index(drop=True),
        pd.DataFrame(columns=["lead_id", "event_type", "occurred_at", "url"]),
        datetime.now().astimezone(),
    )
    return backtest.roc_auc(labels[test], result["score"].to_numpy())


def _best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    best, best_f1 = 50.0, -1.0
    for threshold in np.unique(np.round(scores, 1)):
        predicted = scores >= threshold
        tp = (predicted & labels).sum()
        if tp == 0:
            continue
        precision, recall = tp / predicted.sum(), tp / labels.sum()
        f1 = 2 * precision * recall / (precision + recall)
        if f1 > best_f1:
            best, best_f1 = float(threshold), f1
    return min(max(best, 0.0), 100.0)


def _slug(label: str) -> str:
    slug = "".join(ch if ch.isalnum() else "_" for ch in label.lower())
    slug = "_".join(part for part in slug.split("_") if part)
    slug = slug if slug and slug[0].isalpha() else f"f_{slug}"
    return slug[:60]


def _render(
    rules: dict[str, Any], features: FeatureSet, model_auc: float, train: int, test: int
) -> str:
    import yaml

    names: dict[str, int] = {}
    for rule in rules["fit"]:
        base = rule["name"]
        names[base] = names.get(base, 0) + 1
        if names[base] > 1:
            rule["name"] = f"{base}_{names[base]}"
    header = [
        "# Scoring rules learned from history by `leadflow learn`.",
        f"# Trained on {train} leads, tested on {test} held-out leads.",
        f"# model AUC on held-out leads: {model_auc:.4f}",
        "# rules AUC on held-out leads: (pending)",
        "# Each rule is one level of a column; points are the model's weights scaled to integers.",
        "# Review before use: a level that only exists because of how an outcome was recorded",
        "# (a stage, a tag, a date after conversion) is a leak - exclude it and learn again.",
    ]
    if features.skipped:
        header.append(
            "# Columns not used: "
            + "; ".join(f"{k} ({v})" for k, v in sorted(features.skipped.items()))
        )
    body = yaml.safe_dump(
        rules, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None
    )
    return "\n".join(header) + "\n" + body
