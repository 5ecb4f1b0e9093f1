"""Backtesting a rule set on leads whose outcome is known (won / lost).

ROC AUC of the score, conversion and lift by score decile, and precision/recall of the
MQL decision, so that a rules change is judged on history before it touches a live lead.
"""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from leadflow import store
from leadflow import tables as t
from leadflow.scoring import decide as scoring
from leadflow.scoring.rules import ScoringRules


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Probability that a random won lead outscores a random lost one (ties count half)."""
    positives = labels.sum()
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def deciles(labels: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """Leads split into ten equal groups by score (10 = highest), with conversion and lift."""
    order = pd.Series(scores).rank(method="first").to_numpy()
    decile = np.ceil(order / len(order) * 10).astype(int).clip(1, 10)
    base = labels.mean() if len(labels) else 0.0
    rows = []
    for number in range(10, 0, -1):
        members = decile == number
        count = int(members.sum())
        won = int(labels[members].sum())
        rate = won / count if count else 0.0
        rows.append(
            {
                "decile": number,
                "leads": count,
                "won": won,
                "conversion": round(rate, 4),
                "lift": round(rate / base, 2) if base else None,
                "min_score": round(float(scores[members].min()), 2) if count else None,
            }
        )
    return rows


def evaluate(result: pd.DataFrame, outcomes: pd.Series, rules: ScoringRules) -> dict[str, Any]:
    """Metrics of scored leads against their known outcomes."""
    labels = (outcomes == "won").to_numpy()
    scores = result["score"].to_numpy(dtype=float)
    predicted = result["mql"].to_numpy() & (result["decision"] != "disqualified").to_numpy()
    true_positive = int((predicted & labels).sum())
    precision = true_positive / predicted.sum() if predicted.sum() else None
    recall = true_positive / labels.sum() if labels.sum() else None
    auc = roc_auc(labels, scores)
    return {
        "leads": len(labels),
        "won": int(labels.sum()),
        "conversion": round(float(labels.mean()), 4) if len(labels) else None,
        "roc_auc": round(auc, 4) if auc is not None else None,
        "mql_threshold": rules.mql_threshold,
        "mql_share": round(float(predicted.mean()), 4) if len(labels) else None,
        "precision_at_threshold": round(precision, 4) if precision is not None else None,
        "recall_at_threshold": round(recall, 4) if recall is not None else None,
        "deciles": deciles(labels, scores),
    }


def load_history(
    engine: Engine, rules: ScoringRules, now: datetime, batch_size: int = 100_000
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leads with a known outcome (the columns the rules read) and their events up to now."""
    leads = t.leads
    columns = [*scoring.lead_columns(rules), leads.c.outcome]
    frames, event_frames = [], []
    last = 0
    with engine.connect() as conn:
        while True:
            page = store.read_frame(
                conn,
                select(*columns)
                .where(leads.c.outcome.is_not(None), leads.c.id > last)
                .order_by(leads.c.id)
                .limit(batch_size),
            )
            if page.empty:
                break
            last = int(page["id"].iloc[-1])
            frames.append(page)
            event_frames.append(scoring.load_events(conn, rules, page["id"].tolist(), now))
    if not frames:
        return pd.DataFrame(columns=[c.key for c in columns]), pd.DataFrame(
            columns=["lead_id", "event_type", "occurred_at", "url"]
        )
    return pd.concat(frames, ignore_index=True), pd.concat(event_frames, ignore_index=True)


def run_backtest(
    engine: Engine, rules: ScoringRules, version: str, now: datetime
) -> dict[str, Any]:
    history, events = load_history(engine, rules, now)
    if history.empty:
        return {"version": version, "leads": 0, "message": "no leads with a known outcome"}
    result = scoring.score_leads(rules, history, events, now)
    metrics = evaluate(result, history["outcome"], rules)
    metrics["version"] = version
    metrics["warnings"] = scoring.never_fired(result.attrs["hits"])
    return metrics


def decile_chart(metrics: dict[str, Any], path: Path) -> Path:
    """A PNG of conversion by score decile, with the overall conversion as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(metrics["deciles"], key=lambda r: r["decile"])
    figure, axis = plt.subplots(figsize=(7, 3.6), dpi=110)
    axis.bar(
        [str(r["decile"]) for r in rows], [r["conversion"] * 100 for r in rows], color="#2f6f9f"
    )
    if metrics.get("conversion") is not None:
        axis.axhline(
            metrics["conversion"] * 100, color="#c0504d", linestyle="--", label="all leads"
        )
        axis.legend(loc="upper left")
    axis.set_xlabel("score decile (10 = highest scores)")
    axis.set_ylabel("won (%)")
    axis.set_title(
        f"Conversion by score decile - rules {metrics['version']} - AUC {metrics['roc_auc']}"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def report_markdown(metrics: dict[str, Any], chart: Path | None) -> str:
    lines = [
        f"# Backtest of rules `{metrics['version']}`",
        f"{metrics['leads']} leads with a known outcome, {metrics['won']} won "
        f"({(metrics['conversion'] or 0):.1%}). **ROC AUC {metrics['roc_auc']}**.",
        f"MQL threshold {metrics['mql_threshold']:g}: {(metrics['mql_share'] or 0):.1%} of leads MQL, "
        f"precision {metrics['precision_at_threshold']}, recall {metrics['recall_at_threshold']}.",
        *[f"**Warning:** {warning}" for warning in metrics.get("warnings", [])],
        "",
        "| decile | leads | won | conversion | lift | lowest score |",
        "|---|---|---|---|---|---|",
    ]
    for row in metrics["deciles"]:
        lines.append(
            f"| {row['decile']} | {row['leads']} | {row['won']} | {row['conversion']:.1%} | "
            f"{row['lift']} | {row['min_score']} |"
        )
    if chart is not None:
        encoded = base64.b64encode(chart.read_bytes()).decode("ascii")
        lines += [
            "",
            f"![conversion by decile](data:image/png;base64,{encoded})",
            "",
            f"Chart file: `{chart}`",
        ]
    return "\n".join(lines)
