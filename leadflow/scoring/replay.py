"""What a rescore changes: accumulated batch by batch (bounded memory), then reported as
a summary and a markdown artifact (temperature matrix, new and lost MQLs, biggest movers
and the rules that moved them)."""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from leadflow import store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.scoring import decide as scoring

MQL, DISQUALIFIED = Status.MQL.value, Status.DISQUALIFIED.value


class Diff:
    """The running diff of a rescore: fed each batch's report frame (see score_hop)."""

    def __init__(self, top: int, applied: bool = False) -> None:
        self.applied = applied  # after an applied rescore, its own score is the newest in history
        self.transitions: Counter[tuple[str, str]] = Counter()
        self.new_mql: list[int] = []
        self.lost_mql: list[int] = []
        self.new_mql_count = 0
        self.lost_mql_count = 0
        self.disqualified = 0
        self.leads = 0
        self.top = top
        self.movers: list[tuple[float, int, float, float]] = []  # (|delta|, id, old, new)
        self.new_fired: dict[int, dict[str, float]] = {}

    def add(self, batch: pd.DataFrame) -> None:
        self.leads += len(batch)
        old_temp = batch["old_temperature"].fillna("none").astype(str).tolist()
        for pair in zip(old_temp, batch["temperature"].tolist(), strict=True):
            self.transitions[pair] += 1
        was_mql = (batch["status"] == MQL).to_numpy()
        now_mql = (batch["to_status"] == MQL).to_numpy()
        ids = batch["id"].to_numpy()
        gained = ids[~was_mql & now_mql]
        lost = ids[was_mql & ~now_mql & (batch["decision"] != DISQUALIFIED).to_numpy()]
        self.new_mql_count += len(gained)
        self.lost_mql_count += len(lost)
        self.new_mql += [int(i) for i in gained[: max(0, 10 - len(self.new_mql))]]
        self.lost_mql += [int(i) for i in lost[: max(0, 10 - len(self.lost_mql))]]
        self.disqualified += int(
            ((batch["to_status"] == DISQUALIFIED) & (batch["status"] != DISQUALIFIED)).sum()
        )
        old = batch["old_score"].astype("float64").fillna(0).to_numpy()
        new = batch["score"].astype("float64").to_numpy()
        delta = np.abs(new - old)
        for index in np.argsort(-delta)[: self.top]:
            item = (float(delta[index]), int(ids[index]), float(old[index]), float(new[index]))
            if len(self.movers) < self.top:
                heapq.heappush(self.movers, item)
            elif item > self.movers[0]:
                heapq.heapreplace(self.movers, item)
        movers = {m[1] for m in self.movers}
        for lead_id, fired in zip(ids.tolist(), batch["fired"].tolist(), strict=True):
            if lead_id in movers:
                self.new_fired[int(lead_id)] = scoring.parse_fired(fired)

    def as_dict(self, movers: list[dict[str, Any]]) -> dict[str, Any]:
        order = ["hot", "warm", "cold", "none"]
        matrix = {a: {b: self.transitions.get((a, b), 0) for b in order[:3]} for a in order}
        return {
            "leads": self.leads,
            "temperature_transitions": matrix,
            "new_mql": self.new_mql_count,
            "lost_mql": self.lost_mql_count,
            "newly_disqualified": self.disqualified,
            "new_mql_sample": self.new_mql,
            "lost_mql_sample": self.lost_mql,
            "biggest_movers": movers,
        }


def _moved_by(old: dict[str, float], new: dict[str, float]) -> str:
    changes = {name: new.get(name, 0) - old.get(name, 0) for name in set(old) | set(new)}
    ranked = sorted((v, k) for k, v in changes.items() if abs(v) >= 0.01)
    ranked.sort(key=lambda item: -abs(item[0]))
    return ", ".join(f"{name} {value:+g}" for value, name in ranked[:4]) or "-"


def diff_markdown(summary: dict[str, Any]) -> str:
    matrix = summary["temperature_transitions"]
    lines = [
        f"# Rescore with rules `{summary['version']}` ({'dry run' if summary['dry_run'] else 'applied'})",
        f"Scope `{summary['scope']}`: {summary['leads']} leads. New MQLs **{summary['new_mql']}**, "
        f"lost MQLs **{summary['lost_mql']}**, newly disqualified {summary['newly_disqualified']}.",
        "",
        "## Temperature: before (rows) -> after (columns)",
        "| before \\ after | hot | warm | cold |",
        "|---|---|---|---|",
    ]
    for before, row in matrix.items():
        lines.append(f"| {before} | {row['hot']} | {row['warm']} | {row['cold']} |")
    if summary.get("warnings"):
        lines += ["", "## Warnings", *[f"- {warning}" for warning in summary["warnings"]]]
    lines += [
        "",
        "## Biggest movers",
        "| lead | old | new | change | moved by |",
        "|---|---|---|---|---|",
    ]
    for mover in summary["biggest_movers"]:
        lines.append(
            f"| {mover['lead_id']} | {mover['old_score']} | {mover['new_score']} | "
            f"{mover['change']:+g} | {mover['moved_by']} |"
        )
    return "\n".join(lines)


def biggest_movers(database_url: str, diff: Diff) -> list[dict[str, Any]]:
    """The biggest movers with the rules that moved them (old contributions from the store).

    After an applied rescore, the "old" score is the one before this rescore's own."""
    movers = sorted(diff.movers, reverse=True)
    if not movers:
        return []
    scores = t.lead_scores
    ids = [m[1] for m in movers]
    with store.get_engine(database_url).connect() as conn:
        ranked = (
            select(
                scores.c.lead_id,
                scores.c.fired,
                func.row_number()
                .over(partition_by=scores.c.lead_id, order_by=scores.c.id.desc())
                .label("n"),
            )
            .where(scores.c.lead_id.in_(ids))
            .subquery()
        )
        rows = conn.execute(select(ranked.c.lead_id, ranked.c.fired, ranked.c.n)).all()
    history: dict[int, list[tuple[int, dict[str, float]]]] = {}
    for lead, fired, n in rows:
        history.setdefault(int(lead), []).append((int(n), scoring.parse_fired(fired)))
    out = []
    for _, lead_id, old, new in movers:
        fired = dict(sorted(history.get(lead_id, [])))
        # Applied: the newest row is this rescore's own, the one before it is the old score.
        before = fired.get(2 if diff.applied else 1, {})
        out.append(
            {
                "lead_id": lead_id,
                "old_score": round(old, 2),
                "new_score": round(new, 2),
                "change": round(new - old, 2),
                "moved_by": _moved_by(before, diff.new_fired.get(lead_id, {})),
            }
        )
    return out
