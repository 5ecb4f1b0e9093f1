"""How an MQL gets its owner: account owner, first matching rule, weighted round robin.

Pure: DataFrames and rules in, a ``RoutingResult`` out; no database, no Prefect, no clock
(``now`` is a parameter). The runner reads the leads and the reps' state, calls
``route_leads``, and writes the assignments and the new state in one transaction.

Per lead, oldest first (``queued_at``, then ``id``):

1. **Account owner** (when ``rules.account_owner``): the lead's ``account_owner`` (a rep id)
   takes it if that rep is active, not out of office and under capacity; otherwise the reason
   records why ("account owner ava-ng out of office → rules") and the rules decide.
2. **Rules**: the first rule whose condition holds names a pool (one vectorised pass per
   rule with the shared ``condition_mask``). No rule: the fallback queue.
3. **Weighted round robin** inside the pool, among the reps who can take this lead.
4. **Nobody can**: when a rep of the pool would qualify but is at capacity, the lead waits
   (stays ``mql``, reason "pool emea full, waiting") and is routed by a later run as
   capacity frees; when no rep could take it at all (inactive, out of office, not their
   territory), it goes to the pool's fallback owner, else the fallback queue's owner.

The assignment heuristic (step 3), "least served relative to weight"
----------------------------------------------------------------------
Each (pool, rep) keeps ``served``: leads the pool gave the rep, in lead units. The next lead
goes to the available, eligible rep with the smallest ``(served + 1) / weight``; ties go to
the rep listed first in the rules file. Being deterministic, a burst of 100 leads in one
call is routed exactly as 100 calls of one lead each, given the state each call returns.

Worked example: pool ``emea`` with Felix (weight 2), Grace (1) and Hugo (1), all at 0.

    lead  Felix (s+1)/w   Grace   Hugo    goes to
    1     1/2 = 0.5       1/1     1/1     Felix   (Felix 1, Grace 0, Hugo 0)
    2     2/2 = 1.0       1.0     1.0     Felix   (tie at 1.0: Felix is listed first)
    3     3/2 = 1.5       1.0     1.0     Grace
    4     1.5             2.0     1.0     Hugo
    5     1.5             2.0     2.0     Felix   ... 50% / 25% / 25%, never off by > 1 lead

A rep who cannot take leads for a while (out of office, inactive, at capacity) keeps their
counter while the others' grow. When they become available again their counter is *lifted*
to the pool's current level, ``served = max(served, weight * min(served_j / weight_j))`` over
the reps that stayed available, so they get their fair share from then on instead of every
lead until they "catch up". A rep added to a pool starts the same way (state row missing =
unavailable until now), and removing a rep only drops that rep's row: the others' counters
are never reset. The lift needs to know who was unavailable at the previous turn, so the state
also keeps ``available`` per (pool, rep).

Capacity: ``open_leads`` (owned and not closed) and ``new_today`` per rep come from the
runner (from the database) and are incremented here as leads are assigned, so a batch never
pushes a rep past ``max_open`` or ``max_new_per_day``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from leadflow.routing.rules import Rep, RoutingRules
from leadflow.routing.store import STATE_COLUMNS
from leadflow.rules.conditions import condition_mask

ASSIGNMENT_COLUMNS = (
    "id",
    "owner",  # rep id (the rules' id, not the database key); None while waiting
    "step",  # account_owner | rule | pool_fallback | fallback | waiting
    "rule",
    "pool",
    "version",
    "candidates",  # JSON: {rep id: "assigned" | why skipped}
    "reason",
    "owner_open_after",  # the owner's open leads once this one is counted
    "owner_max_open",  # NaN: no limit
    "within_capacity",  # False only if a rep went over capacity (the gate checks)
)


@dataclass
class RoutingResult:
    """``assignments``: one row per input lead (columns ``ASSIGNMENT_COLUMNS``, input order);
    ``reps_state``: the state to persist (columns ``STATE_COLUMNS``), one row per (pool, rep)
    of the rules; ``stats``: counts per step, per owner and waiting per pool."""

    assignments: pd.DataFrame
    reps_state: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def empty_state() -> pd.DataFrame:
    """The state before anything was ever routed."""
    return pd.DataFrame({c: pd.Series(dtype=object) for c in STATE_COLUMNS})


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# --------------------------------------------------------------------------- vectorised parts


def rule_index(rules: RoutingRules, leads: pd.DataFrame) -> np.ndarray:
    """Per lead, the index of the first rule whose condition holds (-1: none)."""
    out = np.full(len(leads), -1, dtype=np.int64)
    for position, rule in enumerate(rules.rules):
        hit = (
            np.ones(len(leads), dtype=bool)
            if rule.when is None
            else condition_mask(rule.when, leads)
        )
        out[(out < 0) & hit] = position
    return out


def _column(leads: pd.DataFrame, name: str) -> pd.Series:
    if name in leads.columns:
        return leads[name]
    return pd.Series([None] * len(leads), index=leads.index, dtype=object)


def _upper(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), "").astype(str).str.strip().str.upper()


def eligibility(rules: RoutingRules, leads: pd.DataFrame) -> dict[str, dict[str, list[bool]]]:
    """Per rep: which leads are in their territory, industry and segment (lists, for the
    per-lead loop). A rep who lists none of a kind covers every lead for that kind."""
    country = _upper(_column(leads, "country"))
    state = _upper(_column(leads, "state"))
    with_state = (country + "-" + state).where(state != "", "")
    industry = _upper(_column(leads, "industry"))
    sizes = {
        name: pd.to_numeric(_column(leads, name), errors="coerce")
        for name in ("employees", "revenue")
    }
    segment_masks: dict[str, np.ndarray] = {}
    for segment in rules.segments:
        low, high = segment.band
        values = sizes[segment.field]
        mask = values.notna().to_numpy().copy()
        if low is not None:
            mask &= (values >= low).fillna(False).to_numpy(dtype=bool)
        if high is not None:
            mask &= (values < high).fillna(False).to_numpy(dtype=bool)
        segment_masks[segment.name] = mask
    everyone = [True] * len(leads)
    out: dict[str, dict[str, list[bool]]] = {}
    for rep in rules.reps:
        masks = {"territory": everyone, "industry": everyone, "segment": everyone}
        if rep.territories:
            covered = list(rep.territories)
            masks["territory"] = (country.isin(covered) | with_state.isin(covered)).tolist()
        if rep.industries:
            masks["industry"] = industry.isin([i.upper() for i in rep.industries]).tolist()
        if rep.segments:
            mask = np.zeros(len(leads), dtype=bool)
            for name in rep.segments:
                mask |= segment_masks[name]
            masks["segment"] = mask.tolist()
        out[rep.id] = masks
    return out


# --------------------------------------------------------------------------- the loop


@dataclass
class _Load:
    """One rep's load and limits while a batch is routed."""

    rep: Rep
    unavailable: str | None  # inactive | out of office: fixed for the whole call (one `now`)
    open_leads: int
    new_today: int

    def full(self) -> str | None:
        cap = self.rep.capacity
        if cap.max_open is not None and self.open_leads >= cap.max_open:
            return f"at capacity ({self.open_leads}/{cap.max_open} open)"
        if cap.max_new_per_day is not None and self.new_today >= cap.max_new_per_day:
            return f"at daily capacity ({self.new_today}/{cap.max_new_per_day} new today)"
        return None

    def blocked(self) -> str | None:
        return self.unavailable or self.full()


@dataclass
class _Pool:
    """A pool's reps (file order) and their round-robin counters."""

    name: str
    reps: list[str]
    weights: list[float]
    served: list[float]
    available: list[bool]


def _load_state(
    rules: RoutingRules, reps_state: pd.DataFrame, now: datetime
) -> tuple[dict[str, _Load], dict[str, _Pool]]:
    served: dict[tuple[str, str], float] = {}
    was: dict[tuple[str, str], bool] = {}
    open_leads: dict[str, int] = {}
    new_today: dict[str, int] = {}
    if len(reps_state):
        for row in reps_state.itertuples(index=False):
            served[(row.pool, row.rep)] = float(row.served)
            was[(row.pool, row.rep)] = bool(row.available)
            open_leads[row.rep] = int(row.open_leads)
            new_today[row.rep] = int(row.new_today)
    loads = {}
    for rep in rules.reps:
        unavailable = (
            "inactive" if not rep.active else "out of office" if rep.out_of_office_at(now) else None
        )
        loads[rep.id] = _Load(rep, unavailable, open_leads.get(rep.id, 0), new_today.get(rep.id, 0))
    pools = {}
    for pool in rules.pools:
        members = rules.pool_reps(pool.name)
        pools[pool.name] = _Pool(
            pool.name,
            [r.id for r in members],
            [r.weight for r in members],
            [served.get((pool.name, r.id), 0.0) for r in members],
            # A rep missing from the state is new: lifted to the fair level on first turn.
            [was.get((pool.name, r.id), False) for r in members],
        )
    return loads, pools


def _turn(pool: _Pool, loads: dict[str, _Load]) -> list[str | None]:
    """Start of a turn: who can take leads now, lifting reps who just became available."""
    blocked = [loads[rep].blocked() for rep in pool.reps]
    now_available = [b is None for b in blocked]
    steady = [
        pool.served[k] / pool.weights[k]
        for k in range(len(pool.reps))
        if now_available[k] and pool.available[k]
    ]
    if steady:
        level = min(steady)
        for k in range(len(pool.reps)):
            if now_available[k] and not pool.available[k]:
                pool.served[k] = max(pool.served[k], level * pool.weights[k])
    pool.available = now_available
    return blocked


def route_leads(
    leads: pd.DataFrame,
    rules: RoutingRules,
    reps_state: pd.DataFrame,
    now: datetime,
    *,
    version: str = "",
) -> RoutingResult:
    """Route a batch of MQLs. Promises: every input lead has exactly one row, with an owner or
    ``step == "waiting"``; no rep who is inactive or out of office at ``now`` gets a lead
    through a pool or as account owner; no rep goes over ``max_open`` / ``max_new_per_day``
    (given the load in ``reps_state``); the same inputs give the same output, and routing the
    leads in several calls (feeding each call's ``reps_state`` to the next) gives the same
    owners as one call.

    ``leads``: ``id``; optional ``queued_at`` (oldest first), ``account_owner`` (rep id of
    the matched account's owner), ``domain``/``company`` (for the reason), ``country``,
    ``state``, ``industry``, ``employees``, ``revenue`` and every field the rules read
    (``attributes.<key>`` as a column of that name); optional ``exclude``: per lead, rep ids
    who must not get it (they held it before: an SLA reassignment, a rejection), skipped with
    that reason at every step. ``reps_state``: ``STATE_COLUMNS``
    (``empty_state()`` the first time; ``open_leads`` and ``new_today`` filled by the caller
    from the database).
    """
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    order_keys = [c for c in ("queued_at", "id") if c in leads.columns]
    order = (
        np.lexsort(tuple(leads[c].to_numpy() for c in reversed(order_keys)))
        if order_keys
        else np.arange(len(leads))
    )
    rule_of = rule_index(rules, leads).tolist()
    eligible = eligibility(rules, leads)
    loads, pools = _load_state(rules, reps_state, now)
    fallback_of = {p.name: p.fallback_owner for p in rules.pools}
    account_owner = _column(leads, "account_owner").astype(object).tolist()
    exclude = [
        frozenset(v) if isinstance(v, list | tuple | set | frozenset) else frozenset()
        for v in _column(leads, "exclude").tolist()
    ]
    where = (
        _column(leads, "domain")
        .astype(object)
        .where(_column(leads, "domain").notna(), _column(leads, "company").astype(object))
        .tolist()
    )
    n = len(leads)
    owner: list[str | None] = [None] * n
    step: list[str] = [""] * n
    rule_name: list[str | None] = [None] * n
    pool_name: list[str | None] = [None] * n
    candidates: list[str] = ["{}"] * n
    reason: list[str] = [""] * n
    open_after: list[float] = [np.nan] * n
    max_open: list[float] = [np.nan] * n
    within: list[bool] = [True] * n

    def assign(i: int, rep_id: str) -> None:
        load = loads[rep_id]
        within[i] = load.full() is None or step[i] in ("fallback", "pool_fallback")
        load.open_leads += 1
        load.new_today += 1
        owner[i] = rep_id
        open_after[i] = load.open_leads
        cap = load.rep.capacity.max_open
        max_open[i] = np.nan if cap is None else cap

    for i in order.tolist():
        prefix = ""
        # 1. account owner
        if rules.account_owner and isinstance(account_owner[i], str) and account_owner[i]:
            rep_id = account_owner[i]
            load = loads.get(rep_id)
            blocked = (
                "held it before"
                if rep_id in exclude[i]
                else "not in the routing rules"
                if load is None
                else load.blocked()
            )
            if blocked is None:
                step[i] = "account_owner"
                candidates[i] = json.dumps({rep_id: "assigned"})
                reason[i] = f"account owner of {where[i] or 'the matched account'}"
                assign(i, rep_id)
                continue
            prefix = f"account owner {rep_id} {blocked} → rules; "
        # 2. first matching rule
        position = rule_of[i]
        if position < 0:
            step[i] = "fallback"
            reason[i] = f"{prefix}no rule matched → fallback queue {rules.fallback.queue}"
            assign(i, rules.fallback.owner)
            continue
        rule = rules.rules[position]
        pool = pools[rule.pool]
        rule_name[i], pool_name[i] = rule.name, pool.name
        # 3. weighted round robin among those who can take this lead
        blocked = _turn(pool, loads)
        skipped: dict[str, str] = {}
        best, best_key, waiting_for, others = -1, 0.0, False, []
        for k, rep_id in enumerate(pool.reps):
            masks = eligible[rep_id]
            why = next(
                (kind for kind in ("territory", "industry", "segment") if not masks[kind][i]), None
            )
            if rep_id in exclude[i]:
                skipped[rep_id] = "held it before"
            elif why is not None:
                skipped[rep_id] = f"not their {why}"
            elif blocked[k] is not None:
                skipped[rep_id] = blocked[k]  # type: ignore[assignment]
                waiting_for |= loads[rep_id].unavailable is None  # only capacity holds it
            else:
                key = (pool.served[k] + 1.0) / pool.weights[k]
                others.append(rep_id)
                if best < 0 or key < best_key:
                    best, best_key = k, key
        if best >= 0:
            rep_id = pool.reps[best]
            pool.served[best] += 1.0
            available = len(others)
            for other in others:
                skipped[other] = "not their turn"
            skipped[rep_id] = "assigned"
            step[i] = "rule"
            candidates[i] = json.dumps(skipped)
            reason[i] = (
                f"{prefix}rule {rule.name} → pool {pool.name}, {rep_id} by weighted round robin "
                f"(weight {pool.weights[best]:g}, {_ordinal(int(pool.served[best]))} lead; "
                f"{available} of {len(pool.reps)} reps could take it)"
            )
            assign(i, rep_id)
            continue
        candidates[i] = json.dumps(skipped)
        if waiting_for:
            # 4a. full because of capacity: wait, oldest first, for capacity to free
            step[i] = "waiting"
            reason[i] = f"{prefix}rule {rule.name} → pool {pool.name} full, waiting"
            continue
        # 4b. nobody in the pool can take it at all
        queue_owner = fallback_of[pool.name]
        if queue_owner:
            step[i] = "pool_fallback"
            reason[i] = (
                f"{prefix}rule {rule.name} → pool {pool.name} has no available rep "
                f"→ pool fallback owner {queue_owner}"
            )
            assign(i, queue_owner)
        else:
            step[i] = "fallback"
            reason[i] = (
                f"{prefix}rule {rule.name} → pool {pool.name} has no available rep "
                f"→ fallback queue {rules.fallback.queue}"
            )
            assign(i, rules.fallback.owner)

    assignments = pd.DataFrame(
        {
            "id": leads["id"].to_numpy() if "id" in leads.columns else np.arange(n),
            "owner": pd.Series(owner, dtype=object).to_numpy(),
            "step": step,
            "rule": pd.Series(rule_name, dtype=object).to_numpy(),
            "pool": pd.Series(pool_name, dtype=object).to_numpy(),
            "version": version,
            "candidates": candidates,
            "reason": reason,
            "owner_open_after": np.array(open_after, dtype="float64"),
            "owner_max_open": np.array(max_open, dtype="float64"),
            "within_capacity": within,
        },
        index=leads.index,
    )
    state_rows = [
        (
            pool.name,
            rep_id,
            pool.served[k],
            pool.available[k],
            loads[rep_id].open_leads,
            loads[rep_id].new_today,
        )
        for pool in pools.values()
        for k, rep_id in enumerate(pool.reps)
    ]
    state = pd.DataFrame(state_rows, columns=list(STATE_COLUMNS))
    steps = assignments["step"].value_counts().to_dict()
    stats = {
        "routed": int((assignments["owner"].notna()).sum()),
        "waiting": int(steps.get("waiting", 0)),
        "by_step": {k: int(v) for k, v in steps.items()},
        "by_owner": {k: int(v) for k, v in assignments["owner"].value_counts().items()},
        "waiting_by_pool": {
            k: int(v)
            for k, v in assignments.loc[assignments["step"] == "waiting", "pool"]
            .value_counts()
            .items()
        },
    }
    return RoutingResult(assignments, state, stats)


def gate_frame(result: RoutingResult, rules: RoutingRules) -> pd.DataFrame:
    """What ``suites/routed.yaml`` reads: the routed leads (waiting ones excluded) with
    ``owner_active`` and ``rule_and_pool_named`` beside the assignment columns."""
    routed = result.assignments[result.assignments["step"] != "waiting"].copy()
    active = {rep.id: rep.active for rep in rules.reps}
    routed["owner_active"] = routed["owner"].map(active).fillna(False).astype(bool)
    ruled = (routed["step"] == "rule").to_numpy()
    named = (routed["rule"].notna() & routed["pool"].notna()).to_numpy()
    routed["rule_and_pool_named"] = ~ruled | named
    return routed


# --------------------------------------------------------------------------- dry run


@dataclass
class RoutingDiff:
    """What a changed rules file would do to a set of leads, compared with what happened.

    ``per_rep``: rep, before, after, change. ``per_rule``: rule, before, after, change.
    ``changed``: id, owner_before, owner_after, reason_after (leads that would change owner).
    """

    per_rep: pd.DataFrame
    per_rule: pd.DataFrame
    changed: pd.DataFrame

    def to_markdown(self, limit: int = 50) -> str:
        """The diff as a markdown artifact: per rep, per rule, then the first changed leads."""

        def table(frame: pd.DataFrame) -> str:
            if frame.empty:
                return "_none_\n"
            head = "| " + " | ".join(frame.columns) + " |\n"
            rule = "|" + "---|" * len(frame.columns) + "\n"
            body = "".join(
                "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |\n"
                for row in frame.itertuples(index=False)
            )
            return head + rule + body

        return (
            "## Routing dry run\n\n### Per rep\n\n"
            + table(self.per_rep)
            + "\n### Per rule\n\n"
            + table(self.per_rule)
            + f"\n### Leads that would change owner ({len(self.changed)})\n\n"
            + table(self.changed.head(limit))
        )


def _tally(before: pd.Series, after: pd.Series, name: str) -> pd.DataFrame:
    counts = pd.DataFrame(
        {"before": before.value_counts(dropna=False), "after": after.value_counts(dropna=False)}
    ).fillna(0)
    counts = counts.astype(int)
    counts["change"] = counts["after"] - counts["before"]
    counts.index = ["(waiting)" if pd.isna(k) else k for k in counts.index]
    return counts.rename_axis(name).reset_index().sort_values(name, ignore_index=True)


def diff_assignments(current: pd.DataFrame, proposed: pd.DataFrame) -> RoutingDiff:
    """Compare the owners leads have (``current``: id, owner, rule) with ``route_leads``'s
    ``proposed`` assignments for the same leads under other rules. Pure; writes nothing."""
    merged = current[["id", "owner", "rule"]].merge(
        proposed[["id", "owner", "rule", "reason"]], on="id", suffixes=("_before", "_after")
    )
    moved = merged["owner_before"].astype(object).fillna("") != merged["owner_after"].astype(
        object
    ).fillna("")
    changed = merged.loc[moved, ["id", "owner_before", "owner_after", "reason"]].rename(
        columns={"reason": "reason_after"}
    )
    return RoutingDiff(
        _tally(merged["owner_before"], merged["owner_after"], "rep"),
        _tally(merged["rule_before"], merged["rule_after"], "rule"),
        changed.reset_index(drop=True),
    )
