"""When leads are scored.

``score``: enriched leads get their first score and become ``mql`` (at or over the
threshold, or fast-tracked), ``nurturing`` or ``disqualified``; leads already nurturing
or MQL that have engagement newer than their score are scored again (nurturing ones
that now qualify become MQL).

``rescore``: on demand after a rules change, over a scope of leads, as a dry run or for
real; always produces a diff. Leads a rep already owns keep their status.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote
from sqlalchemy import func, select

from leadflow import store
from leadflow import tables as t
from leadflow.config import ConfigError, parse
from leadflow.lifecycle import Status
from leadflow.scoring_rules import Condition, ScoringRules
from leadflow.settings import get_settings
from tasks import hops, quality
from tasks import scoring as engine_rules

SCORED = ("mql", "nurturing", "routed", "accepted", "qualified", "won", "lost", "recycled")
MOVABLE = frozenset({"mql", "nurturing"})  # statuses a score may change; the rest a rep owns


def next_status(current: str, decision: str, mode: str) -> str:
    """Where a lead goes given what the rules decided. ``mode``: new | engaged | rescore."""
    if current == Status.ENRICHED.value:
        return decision
    if current not in MOVABLE:
        return current  # owned by a rep (or recycled): the score changes, the status does not
    if decision == "disqualified":
        return decision
    if current == "mql" and mode != "rescore":
        return current  # new engagement never demotes an MQL; only a deliberate rescore does
    return decision


# --------------------------------------------------------------------------- tasks


def next_range(
    conn: Any, mode: str, size: int, start: int, candidates: list[int]
) -> tuple[list[int], int]:
    """The next batch this transaction may score, and where the next search starts.

    ``new``: enriched leads, taken by id range: a range of ``size`` ids is held with a
    transaction-level advisory lock, so concurrent scorers take different ranges without
    locking (and so writing) every row. ``engaged``: the given candidate ids, in order.
    Returns ([], start) when nothing is left.
    """
    leads = t.leads
    postgres = store.is_postgres(conn)
    if mode == "engaged":
        chunk = [i for i in candidates if i >= start][:size]
        if not chunk:
            return [], start
        query = select(leads.c.id).where(leads.c.id.in_(chunk), leads.c.status.in_(sorted(MOVABLE)))
        if postgres:
            query = query.with_for_update(skip_locked=True)
        return sorted(conn.execute(query).scalars()), chunk[-1] + 1
    while True:
        first = conn.execute(
            select(func.min(leads.c.id)).where(
                leads.c.status == Status.ENRICHED.value, leads.c.id >= start
            )
        ).scalar()
        if first is None:
            return [], start
        number = int(first) // size
        if postgres:
            held = conn.execute(
                select(func.pg_try_advisory_xact_lock(func.hashtext("leadflow.score"), number))
            ).scalar_one()
            if not held:
                start = (number + 1) * size
                continue
        ids = (
            conn.execute(
                select(leads.c.id)
                .where(
                    leads.c.status == Status.ENRICHED.value,
                    leads.c.id >= number * size,
                    leads.c.id < (number + 1) * size,
                )
                .order_by(leads.c.id)
            )
            .scalars()
            .all()
        )
        return list(ids), (number + 1) * size


def engaged_candidates(conn: Any, watermark: int) -> list[int]:
    """Nurturing and MQL leads with engagement newer than their score, in id order."""
    leads, events = t.leads, t.engagement_events
    bound = conn.execute(
        select(func.coalesce(func.min(func.coalesce(leads.c.scored_event_id, 0)), 0)).where(
            leads.c.status.in_(sorted(MOVABLE))
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
            leads.c.status.in_(sorted(MOVABLE)),
        )
        .order_by(leads.c.id)
    )
    return list(conn.execute(query).scalars())


def _score_changes(
    leads: pd.DataFrame,
    result: pd.DataFrame,
    rules: ScoringRules,
    version: str,
    now: datetime,
    mode: str,
    watermark: int | None,
) -> pd.DataFrame:
    to_status = [
        next_status(s, d, mode) for s, d in zip(leads["status"], result["decision"], strict=True)
    ]
    changes = pd.DataFrame(
        {
            "id": leads["id"].to_numpy(),
            "from_status": leads["status"].to_numpy(),
            "to_status": to_status,
            "score": result["score"].to_numpy(),
            "temperature": result["temperature"].to_numpy(),
            "score_version": version,
            "scored_at": pd.Timestamp(now),
            "reason": engine_rules.decision_reason(result, rules, version),
        }
    )
    if watermark is not None:
        changes["scored_event_id"] = watermark
    return changes


def _history_writer(
    leads: pd.DataFrame,
    result: pd.DataFrame,
    rules: ScoringRules,
    version: str,
    text: str,
    now: datetime,
    run_id: str | None,
) -> Any:
    history = engine_rules.history_rows(
        leads["id"], result, version, now, result["decision"], run_id
    )

    def also(conn: Any, quarantined: set[Any]) -> None:
        engine_rules.record_rule_set(conn, rules, version, text)
        store.bulk_insert(conn, t.lead_scores, history[~history["lead_id"].isin(quarantined)])

    return also


def score_locked(
    conn: Any,
    ids: list[int],
    *,
    rules: ScoringRules,
    version: str,
    text: str,
    now: datetime,
    mode: str,
    watermark: int | None,
    max_quarantine_rate: float | None,
    batch_ref: str,
) -> hops.HopOutcome:
    """Score leads this transaction holds and write the result in it (raises GateFailed)."""
    leads = store.read_frame_by_ids(
        conn, engine_rules.lead_columns(rules), t.leads.c.id, ids, order_by=t.leads.c.id
    )
    events = engine_rules.load_events(conn, rules, leads["id"].tolist(), now)
    result = engine_rules.score_leads(rules, leads, events, now)
    split, verdict = hops.gate(
        engine_rules.SUITE,
        engine_rules.gate_frame(leads["id"], result, version),
        batch_ref=batch_ref,
        max_quarantine_rate=max_quarantine_rate,
    )
    if not verdict.success:
        raise quality.GateFailed(verdict)
    run_id = flow_run.get_id()
    outcome = hops.write_gated(
        conn,
        split,
        verdict,
        hop="score",
        suite=engine_rules.SUITE,
        actor="score" if mode != "rescore" else "rescore",
        changes=_score_changes(leads, result, rules, version, now, mode, watermark),
        now=now,
        flow_run_id=run_id,
        also=_history_writer(leads, result, rules, version, text, now, run_id),
    )
    outcome.extra = {"hot": int((result["temperature"] == "hot").sum())}
    return outcome


@task(name="score-batch", cache_policy=NO_CACHE, task_run_name="score-{mode}-batch-{batch_no}")
def score_batch(
    database_url: str,
    rules: ScoringRules,
    version: str,
    text: str,
    now: datetime,
    mode: str,
    watermark: int,
    start: int,
    candidates: list[int],
    size: int,
    batch_no: int,
    max_quarantine_rate: float | None = None,
) -> tuple[hops.HopOutcome | None, int]:
    """Take, score and write one batch in a single transaction.

    Returns (outcome, where the next batch starts); outcome None when nothing is left.
    """
    engine = store.get_engine(database_url)
    batch_ref = f"score:{mode}:{batch_no}:{store.new_claim_token('s').split(':')[1][:8]}"
    try:
        with engine.begin() as conn:
            ids, following = next_range(conn, mode, size, start, candidates)
            if not ids:
                return None, following
            outcome = score_locked(
                conn,
                ids,
                rules=rules,
                version=version,
                text=text,
                now=now,
                mode=mode,
                watermark=watermark,
                max_quarantine_rate=max_quarantine_rate,
                batch_ref=batch_ref,
            )
            return outcome, following
    except quality.GateFailed as failure:
        hops.record_failure(engine, failure.result, flow_run_id=flow_run.get_id())
        raise


@task(name="load-rules", cache_policy=NO_CACHE)
def load_rules_task(spec: str | None) -> tuple[ScoringRules, str, str]:
    return engine_rules.rule_source(spec)


# --------------------------------------------------------------------------- score


@flow(name="score", flow_run_name="score")
def score(
    now: datetime | None = None,
    database_url: str | None = None,
    rules: str | None = None,
    batch_size: int | None = None,
    max_quarantine_rate: float | None = None,
) -> State:
    """Score enriched leads; rescore nurturing/MQL leads with new engagement."""
    started = time.monotonic()
    settings = get_settings()
    database_url = database_url or settings.database_url
    now = now or datetime.now(UTC)
    size = batch_size or settings.batch_size
    rule_set, version, text = load_rules_task(rules)
    with store.get_engine(database_url).connect() as conn:
        watermark = engine_rules.event_watermark(conn)
    summary: dict[str, Any] = {
        "version": version,
        "scored": 0,
        "rescored_engaged": 0,
        "mql": 0,
        "nurturing": 0,
        "disqualified": 0,
        "quarantined": 0,
        "hot": 0,
    }
    gates: list[quality.GateResult] = []
    failure = None
    for mode in ("new", "engaged"):
        candidates: list[int] = []
        if mode == "engaged":
            with store.get_engine(database_url).connect() as conn:
                candidates = engaged_candidates(conn, watermark)
        start = 0
        batch_no = 0
        while failure is None:
            batch_no += 1
            state = score_batch(
                database_url,
                quote(rule_set),
                version,
                text,
                now,
                mode,
                watermark,
                start,
                quote(candidates),
                size,
                batch_no,
                max_quarantine_rate,
                return_state=True,
            )
            try:
                outcome, start = state.result()
            except quality.GateFailed as exc:
                gates.append(exc.result)
                failure = str(exc)
                break
            if outcome is None:
                break
            gates.append(outcome.gate)
            summary["scored" if mode == "new" else "rescored_engaged"] += outcome.claimed
            for status in ("mql", "nurturing", "disqualified"):
                summary[status] += outcome.moved.get(status, 0)
            summary["quarantined"] += outcome.quarantined
            summary["hot"] += outcome.extra.get("hot", 0)
    summary["seconds"] = round(time.monotonic() - started, 3)
    if gates:
        quality.publish_docs(gates)
    if failure:
        return Failed(message=failure, data=summary)
    return Completed(
        message=f"scored {summary['scored']} new and {summary['rescored_engaged']} with new engagement: "
        f"to mql {summary['mql']}, nurturing {summary['nurturing']}, disqualified {summary['disqualified']}",
        data=summary,
    )


# --------------------------------------------------------------------------- rescore


def parse_scope(scope: str) -> tuple[list[str], Condition | None]:
    """``all`` | ``status:a,b`` | ``where:<condition as YAML/JSON>`` -> (statuses, condition)."""
    if scope in ("", "all"):
        return list(SCORED), None
    if scope.startswith("status:"):
        statuses = [s.strip() for s in scope[7:].split(",") if s.strip()]
        unknown = sorted(set(statuses) - set(SCORED))
        if unknown or not statuses:
            raise ConfigError(
                f"scope: unknown or unscored status(es) {unknown}; use any of {list(SCORED)}"
            )
        return statuses, None
    if scope.startswith("where:"):
        try:
            data = yaml.safe_load(scope[6:])
        except yaml.YAMLError as exc:
            raise ConfigError(f"scope: not valid YAML/JSON: {exc}") from exc
        return list(SCORED), parse(Condition, data, "scope")
    raise ConfigError(f"scope {scope!r}: use all, status:<a,b>, or where:<condition>")


class Diff:
    """What a rescore changes, accumulated batch by batch (bounded memory)."""

    def __init__(self, top: int) -> None:
        self.transitions: Counter[tuple[str, str]] = Counter()
        self.new_mql: list[int] = []
        self.lost_mql: list[int] = []
        self.new_mql_count = 0
        self.lost_mql_count = 0
        self.disqualified = 0
        self.leads = 0
        self.top = top
        self.movers: list[tuple[float, int, float, float]] = []  # (|delta|, id, old, new)

    def add(self, leads: pd.DataFrame, result: pd.DataFrame, to_status: list[str]) -> None:
        self.leads += len(leads)
        old_temp = leads["temperature"].fillna("none").astype(str).tolist()
        for pair in zip(old_temp, result["temperature"].tolist(), strict=True):
            self.transitions[pair] += 1
        was_mql = (leads["status"] == "mql").to_numpy()
        now_mql = np.array([s == "mql" for s in to_status])
        gained = leads["id"].to_numpy()[~was_mql & now_mql]
        lost = leads["id"].to_numpy()[
            was_mql & ~now_mql & (result["decision"] != "disqualified").to_numpy()
        ]
        self.new_mql_count += len(gained)
        self.lost_mql_count += len(lost)
        self.new_mql += [int(i) for i in gained[: max(0, 10 - len(self.new_mql))]]
        self.lost_mql += [int(i) for i in lost[: max(0, 10 - len(self.lost_mql))]]
        self.disqualified += sum(
            1
            for s, o in zip(to_status, leads["status"], strict=True)
            if s == "disqualified" and o != s
        )
        old = leads["score"].astype("float64").fillna(0).to_numpy()
        new = result["score"].to_numpy()
        delta = np.abs(new - old)
        for index in np.argsort(-delta)[: self.top]:
            item = (
                float(delta[index]),
                int(leads["id"].iloc[index]),
                float(old[index]),
                float(new[index]),
            )
            if len(self.movers) < self.top:
                heapq.heappush(self.movers, item)
            elif item > self.movers[0]:
                heapq.heapreplace(self.movers, item)

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


def _old_fired(conn: Any, lead_ids: list[int]) -> dict[int, dict[str, float]]:
    """Each lead's contributions in its latest applied score."""
    scores = t.lead_scores
    latest = (
        select(scores.c.lead_id, func.max(scores.c.id).label("id"))
        .where(scores.c.lead_id.in_(lead_ids))
        .group_by(scores.c.lead_id)
        .subquery()
    )
    rows = conn.execute(
        select(scores.c.lead_id, scores.c.fired).join(latest, scores.c.id == latest.c.id)
    )
    return {int(lead): engine_rules.parse_fired(fired) for lead, fired in rows}


def _moved_by(old: dict[str, float], new: dict[str, float]) -> str:
    changes = {name: new.get(name, 0) - old.get(name, 0) for name in set(old) | set(new)}
    ranked = sorted((v, k) for k, v in changes.items() if abs(v) >= 0.01)
    ranked.sort(key=lambda item: -abs(item[0]))
    return ", ".join(f"{name} {value:+g}" for value, name in ranked[:4]) or "-"


@task(name="rescore-batch", cache_policy=NO_CACHE, task_run_name="rescore-batch-{batch_no}")
def rescore_batch(
    database_url: str,
    ids: list[int],
    rules: ScoringRules,
    version: str,
    text: str,
    now: datetime,
    condition: Condition | None,
    dry_run: bool,
    batch_no: int,
    diff: Diff,
    new_fired: dict[int, dict[str, float]],
) -> dict[str, Any]:
    """Score one page of leads with the new rules; record the diff; apply unless dry run."""
    engine = store.get_engine(database_url)
    columns = engine_rules.lead_columns(rules)
    leads_table = t.leads
    with engine.connect() as conn:
        leads = store.read_frame_by_ids(
            conn, columns, leads_table.c.id, ids, order_by=leads_table.c.id
        )
        if condition is not None and len(leads):
            leads = leads[engine_rules.condition_mask(condition, leads)].reset_index(drop=True)
        events = engine_rules.load_events(conn, rules, leads["id"].tolist(), now)
    if leads.empty:
        return {"rescored": 0, "busy": 0}
    result = engine_rules.score_leads(rules, leads, events, now)
    to_status = [
        next_status(s, d, "rescore")
        for s, d in zip(leads["status"], result["decision"], strict=True)
    ]
    diff.add(leads, result, to_status)
    movers = {m[1] for m in diff.movers}
    for lead_id, fired in zip(leads["id"].tolist(), result["fired"].tolist(), strict=True):
        if lead_id in movers:
            new_fired[int(lead_id)] = engine_rules.parse_fired(fired)
    if dry_run:
        return {"rescored": len(leads), "busy": 0}
    with engine.begin() as conn:
        query = select(leads_table.c.id).where(
            leads_table.c.id.in_(leads["id"].tolist()), leads_table.c.status.in_(list(SCORED))
        )
        if store.is_postgres(conn):
            query = query.with_for_update(skip_locked=True)
        mine = set(conn.execute(query).scalars())
        if not mine:
            return {"rescored": 0, "busy": len(leads)}
        outcome = score_locked(
            conn,
            sorted(mine),
            rules=rules,
            version=version,
            text=text,
            now=now,
            mode="rescore",
            watermark=None,
            max_quarantine_rate=None,
            batch_ref=f"rescore:{batch_no}",
        )
    return {"rescored": outcome.claimed, "busy": len(leads) - len(mine), "moved": outcome.moved}


@flow(name="rescore", flow_run_name="rescore")
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
    them) and, unless ``dry_run``, apply it."""
    started = time.monotonic()
    settings = get_settings()
    database_url = database_url or settings.database_url
    now = now or datetime.now(UTC)
    size = batch_size or settings.batch_size
    rule_set, version, text = load_rules_task(rules)
    statuses, condition = parse_scope(scope)
    engine = store.get_engine(database_url)
    diff = Diff(top_movers)
    new_fired: dict[int, dict[str, float]] = {}
    leads_table = t.leads
    last_id = 0
    batch_no = 0
    rescored = busy = 0
    while True:
        with engine.connect() as conn:
            page = (
                conn.execute(
                    select(leads_table.c.id)
                    .where(leads_table.c.status.in_(statuses), leads_table.c.id > last_id)
                    .order_by(leads_table.c.id)
                    .limit(size)
                )
                .scalars()
                .all()
            )
        if not page:
            break
        last_id = page[-1]
        batch_no += 1
        counts = rescore_batch(
            database_url,
            quote(list(page)),
            quote(rule_set),
            version,
            text,
            now,
            quote(condition),
            dry_run,
            batch_no,
            quote(diff),
            quote(new_fired),
        )
        rescored += counts["rescored"]
        busy += counts["busy"]
    movers = sorted(diff.movers, reverse=True)
    with engine.connect() as conn:
        old_fired = _old_fired(conn, [m[1] for m in movers]) if movers else {}
    mover_rows = [
        {
            "lead_id": lead_id,
            "old_score": round(old, 2),
            "new_score": round(new, 2),
            "change": round(new - old, 2),
            "moved_by": _moved_by(old_fired.get(lead_id, {}), new_fired.get(lead_id, {})),
        }
        for _, lead_id, old, new in movers
    ]
    summary = {
        "version": version,
        "scope": scope,
        "dry_run": dry_run,
        "rescored": rescored,
        "busy": busy,
        **diff.as_dict(mover_rows),
    }
    summary["seconds"] = round(time.monotonic() - started, 3)
    create_markdown_artifact(
        key="rescore-diff",
        markdown=diff_markdown(summary),
        description=f"Rescore with rules {version} ({'dry run' if dry_run else 'applied'})",
    )
    return Completed(
        message=f"{'dry run: ' if dry_run else ''}{rescored} leads rescored with {version}: "
        f"{summary['new_mql']} new MQLs, {summary['lost_mql']} lost",
        data=summary,
    )


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
