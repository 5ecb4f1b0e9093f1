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

    The steps, each defined below in this order:

    1. ``allocate_batch``: team allocation, vectorised: the leads oldest first, each lead's
       first matching rule (hence its pool) and which rep covers which lead.
    2. ``load_state``: each rep's load and each pool's round-robin counters.
    3. ``route_lead``, per lead oldest first: ``try_account_owner``, else member distribution
       in the rule's pool (``weighted_round_robin``, explained by ``explain_round_robin``),
       else ``wait_or_fall_back``.
    4. ``Decisions.frame``, ``state_frame``, ``routing_stats``: the rows, the state, the counts.

    Worked example (used in every step below): pool ``emea`` with felix (weight 2, territories
    DE and FR), grace (weight 1, anywhere) and hugo (weight 1, FR only); one rule, ``emea-all``
    (region EMEA → emea); fallback queue ``sales-ops`` owned by ops1. Three EMEA leads from
    DE, all at 0: felix ((0+1)/2 = 0.5), felix (tie at 1.0 with grace, felix listed first),
    grace; hugo is "not their territory" each time. An APAC lead matches no rule and goes to
    ops1, "no rule matched → fallback queue sales-ops".
    """
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    batch = allocate_batch(leads, rules)
    loads, pools = load_state(rules, reps_state, now)
    run = RoutingRun(rules, batch, loads, pools, Decisions.empty(len(leads)))
    for i in batch.order:
        route_lead(run, i)
    assignments = run.out.frame(leads, version)
    return RoutingResult(assignments, state_frame(pools, loads), routing_stats(assignments))


# --------------------------------------------------------------------------- 1. team allocation


@dataclass
class LeadBatch:
    """What the per-lead loop reads, computed once for the batch (positions are the input's)."""

    order: list[int]  # positions, oldest first
    rule_of: list[int]  # per lead: index of the first matching rule, -1 none
    eligible: dict[str, dict[str, list[bool]]]  # rep id -> territory|industry|segment -> lead
    account_owner: list[str | None]  # per lead: the account owner to try first, if any
    exclude: list[frozenset[str]]  # per lead: reps who held it before
    where: list[Any]  # per lead: domain, else company (the account-owner reason names it)


def allocate_batch(leads: pd.DataFrame, rules: RoutingRules) -> LeadBatch:
    """Team allocation for the whole batch, one vectorised pass per rule and per rep: the
    routing order, each lead's first matching rule (its pool), who covers which lead, and the
    per-lead columns the loop reads, as lists (``account_owner``: None where there is no
    owner to try, everywhere when the rules do not route to account owners).

    Example (the worked example's rules): ids [3, 1, 2] queued [10:05, 10:00, 10:00], region
    [EMEA, APAC, EMEA], country [DE, FR, DE], exclude [None, None, ["grace"]] → order
    [1, 2, 0] (ids 1, 2, 3), rule_of [0, -1, 0], eligible["hugo"]["territory"]
    [False, True, False], exclude [{}, {}, {"grace"}]; account_owner ["grace", "", NaN] →
    ["grace", None, None].
    """
    exclude = [
        frozenset(v) if isinstance(v, list | tuple | set | frozenset) else frozenset()
        for v in _column(leads, "exclude").tolist()
    ]
    owners = _column(leads, "account_owner").astype(object).tolist()
    account_owner = (
        [owner if isinstance(owner, str) and owner else None for owner in owners]
        if rules.account_owner
        else [None] * len(owners)
    )
    domain = _column(leads, "domain")
    company = _column(leads, "company").astype(object)
    where = domain.astype(object).where(domain.notna(), company)
    where = where.where(where.notna(), None)  # neither: no NaN in "account owner of ..."
    return LeadBatch(
        order=routing_order(leads).tolist(),
        rule_of=rule_index(rules, leads).tolist(),
        eligible=eligibility(rules, leads),
        account_owner=account_owner,
        exclude=exclude,
        where=where.tolist(),
    )


def routing_order(leads: pd.DataFrame) -> np.ndarray:
    """Positions of ``leads`` oldest first: by ``queued_at``, then ``id`` (whichever of the
    two exist; input order when neither does).

    Example: ids [3, 1, 2] queued [10:05, 10:00, 10:00] → [1, 2, 0]: ids 1 and 2 tie on
    time and 1 is smaller; 3 came last.
    """
    order_keys = [c for c in ("queued_at", "id") if c in leads.columns]
    if not order_keys:
        return np.arange(len(leads))
    return np.lexsort(tuple(leads[c].to_numpy() for c in reversed(order_keys)))


def rule_index(rules: RoutingRules, leads: pd.DataFrame) -> np.ndarray:
    """Per lead, the index of the first rule whose condition holds (-1: none).

    Example: rules [emea-all (region EMEA)], regions [EMEA, APAC, EMEA] → [0, -1, 0].
    """
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
    per-lead loop). A rep who lists none of a kind covers every lead for that kind.

    Example: hugo (territories [FR]) and countries [DE, FR, DE] → hugo's territory
    [False, True, False], industry and segment [True, True, True]; grace: all True.
    """
    country = _upper(_column(leads, "country"))
    state = _upper(_column(leads, "state"))
    with_state = (country + "-" + state).where(state != "", "")
    industry = _upper(_column(leads, "industry"))
    segment_masks = _segment_masks(rules, leads)
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


def _segment_masks(rules: RoutingRules, leads: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per segment of the rules, which leads fall in its band (``[low, high)``; a missing
    size is in no segment)."""
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
    return segment_masks


# --------------------------------------------------------------------------- 2. the reps' state


@dataclass
class RepLoad:
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
class PoolCounters:
    """A pool's reps (file order), their round-robin counters and who was available at the
    previous turn; ``fallback_owner`` takes leads none of them can."""

    name: str
    reps: list[str]
    weights: list[float]
    served: list[float]
    available: list[bool]
    fallback_owner: str | None = None


def load_state(
    rules: RoutingRules, reps_state: pd.DataFrame, now: datetime
) -> tuple[dict[str, RepLoad], dict[str, PoolCounters]]:
    """The reps' loads and the pools' counters at the start of a call, from ``reps_state``.

    Example: state row (emea, felix, served 4, available, open 12, new today 3) and hugo out
    of office at ``now`` → loads felix (None, 12, 3), grace (None, 0, 0), hugo ("out of
    office", 0, 0); pool emea served [4, 0, 0], available [True, False, False] (grace and
    hugo have no row yet: they are lifted to the fair level on their first turn).
    """
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
        loads[rep.id] = RepLoad(
            rep, unavailable, open_leads.get(rep.id, 0), new_today.get(rep.id, 0)
        )
    pools = {}
    for pool in rules.pools:
        members = rules.pool_reps(pool.name)
        pools[pool.name] = PoolCounters(
            pool.name,
            [r.id for r in members],
            [r.weight for r in members],
            [served.get((pool.name, r.id), 0.0) for r in members],
            # A rep missing from the state is new: lifted to the fair level on first turn.
            [was.get((pool.name, r.id), False) for r in members],
            pool.fallback_owner,
        )
    return loads, pools


# --------------------------------------------------------------------------- 3. per lead


@dataclass
class Decisions:
    """The assignment columns being filled, one slot per input lead (input positions)."""

    owner: list[str | None]
    step: list[str]
    rule: list[str | None]
    pool: list[str | None]
    candidates: list[str]
    reason: list[str]
    open_after: list[float]
    max_open: list[float]
    within: list[bool]

    @classmethod
    def empty(cls, n: int) -> Decisions:
        return cls(
            [None] * n,
            [""] * n,
            [None] * n,
            [None] * n,
            ["{}"] * n,
            [""] * n,
            [np.nan] * n,
            [np.nan] * n,
            [True] * n,
        )

    def assign(self, i: int, load: RepLoad) -> None:
        """Lead ``i`` goes to ``load``'s rep (``step[i]`` set first), counted in their load."""
        self.within[i] = load.full() is None or self.step[i] in ("fallback", "pool_fallback")
        load.open_leads += 1
        load.new_today += 1
        self.owner[i] = load.rep.id
        self.open_after[i] = load.open_leads
        cap = load.rep.capacity.max_open
        self.max_open[i] = np.nan if cap is None else cap

    def frame(self, leads: pd.DataFrame, version: str) -> pd.DataFrame:
        """The decisions as ``ASSIGNMENT_COLUMNS`` rows, on ``leads``' index (input order)."""
        n = len(self.owner)
        return pd.DataFrame(
            {
                "id": leads["id"].to_numpy() if "id" in leads.columns else np.arange(n),
                "owner": pd.Series(self.owner, dtype=object).to_numpy(),
                "step": self.step,
                "rule": pd.Series(self.rule, dtype=object).to_numpy(),
                "pool": pd.Series(self.pool, dtype=object).to_numpy(),
                "version": version,
                "candidates": self.candidates,
                "reason": self.reason,
                "owner_open_after": np.array(self.open_after, dtype="float64"),
                "owner_max_open": np.array(self.max_open, dtype="float64"),
                "within_capacity": self.within,
            },
            index=leads.index,
        )


@dataclass
class RoutingRun:
    """One call's inputs and running state, handed from step to step."""

    rules: RoutingRules
    batch: LeadBatch
    loads: dict[str, RepLoad]
    pools: dict[str, PoolCounters]
    out: Decisions


def route_lead(run: RoutingRun, i: int) -> None:
    """Lead ``i`` (an input position), in the module docstring's order: its account owner,
    else its rule's pool by weighted round robin, else it waits or falls back.

    Example: a DE lead whose account owner is zoe (no such rep) → prefix "account owner zoe
    not in the routing rules → rules; ", rule emea-all → pool emea → felix by weighted round
    robin; an APAC lead → no rule → ops1 "no rule matched → fallback queue sales-ops".
    """
    prefix = ""
    if run.batch.account_owner[i] is not None:
        taken, prefix = try_account_owner(run, i)
        if taken:
            return
    out, position = run.out, run.batch.rule_of[i]
    if position < 0:
        out.step[i] = "fallback"
        out.reason[i] = f"{prefix}no rule matched → fallback queue {run.rules.fallback.queue}"
        out.assign(i, run.loads[run.rules.fallback.owner])
        return
    rule = run.rules.rules[position]
    pool = run.pools[rule.pool]
    out.rule[i], out.pool[i] = rule.name, pool.name
    head = f"{prefix}rule {rule.name} → pool {pool.name}"
    best, candidates, could_take, waiting = weighted_round_robin(
        pool, run.loads, run.batch.eligible, run.batch.exclude[i], i
    )
    out.candidates[i] = json.dumps(candidates)
    if best >= 0:
        explain_round_robin(run, i, head, pool, best, could_take)
    else:
        wait_or_fall_back(run, i, head, pool, waiting)


def try_account_owner(run: RoutingRun, i: int) -> tuple[bool, str]:
    """Step 1, when the rules enable it: the matched account's owner takes lead ``i`` if they
    can. Returns (taken, the reason's prefix when the rules decide instead).

    Example: account owner grace, domain acme.com → (True, ""), grace owns it, "account
    owner of acme.com"; account owner hugo, out of office → (False, "account owner hugo out
    of office → rules; "); no account owner (or the rules skip this step) → (False, "").
    """
    rep_id = run.batch.account_owner[i]
    if rep_id is None:
        return False, ""
    blocked = account_owner_blocked(rep_id, run.batch.exclude[i], run.loads)
    if blocked is not None:
        return False, f"account owner {rep_id} {blocked} → rules; "
    out = run.out
    out.step[i] = "account_owner"
    out.candidates[i] = json.dumps({rep_id: "assigned"})
    out.reason[i] = f"account owner of {run.batch.where[i] or 'the matched account'}"
    out.assign(i, run.loads[rep_id])
    return True, ""


def account_owner_blocked(
    rep_id: str, exclude: frozenset[str], loads: dict[str, RepLoad]
) -> str | None:
    """Why the account owner cannot take the lead (None: they can).

    Example: "grace" with exclude {"grace"} → "held it before"; "zoe" → "not in the routing
    rules"; hugo out of office → "out of office"; felix at 40 of 40 open → "at capacity
    (40/40 open)".
    """
    if rep_id in exclude:
        return "held it before"
    load = loads.get(rep_id)
    if load is None:
        return "not in the routing rules"
    return load.blocked()


def weighted_round_robin(
    pool: PoolCounters,
    loads: dict[str, RepLoad],
    eligible: dict[str, dict[str, list[bool]]],
    exclude: frozenset[str],
    i: int,
) -> tuple[int, dict[str, str], int, bool]:
    """Member distribution: lead ``i`` goes to the rep of ``pool`` who can take it with the
    smallest ``(served + 1) / weight`` (ties: listed first), whose counter grows by one.

    Returns (the rep's index in the pool, -1 if nobody can take it; the candidates: rep id ->
    "assigned" | "not their turn" | why skipped; how many reps could take it; whether a rep
    would qualify but is at capacity, so the lead waits). A plain tuple: this runs per lead.

    Example: emea counters all 0, a DE lead: felix (0+1)/2 = 0.5, grace (0+1)/1 = 1.0, hugo
    "not their territory" → (0, {"hugo": "not their territory", "felix": "assigned",
    "grace": "not their turn"}, 2, False), felix served 1. With felix and grace at capacity:
    (-1, {...}, 0, True): the lead waits; with both out of office instead: (-1, {...}, 0,
    False): it falls back.
    """
    blocked = start_turn(pool, loads)
    skipped: dict[str, str] = {}
    best, best_key, waiting_for, others = -1, 0.0, False, []
    for k, rep_id in enumerate(pool.reps):
        masks = eligible[rep_id]
        why = next(
            (kind for kind in ("territory", "industry", "segment") if not masks[kind][i]), None
        )
        if rep_id in exclude:
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
    if best < 0:
        return -1, skipped, 0, waiting_for
    pool.served[best] += 1.0
    for other in others:
        skipped[other] = "not their turn"
    skipped[pool.reps[best]] = "assigned"
    return best, skipped, len(others), waiting_for


def start_turn(pool: PoolCounters, loads: dict[str, RepLoad]) -> list[str | None]:
    """Start of a turn: who can take leads now (None) or why not, lifting each rep who just
    became available to ``weight * min(served / weight)`` over the reps that stayed available.

    Example: felix (weight 2) served 10 and grace (1) served 5 stayed available; hugo (1)
    served 1, back from time off → level min(10/2, 5/1) = 5, hugo lifted to 5 (not 1: no
    backlog of missed turns); returns [None, None, None].
    """
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


def explain_round_robin(
    run: RoutingRun, i: int, head: str, pool: PoolCounters, best: int, could_take: int
) -> None:
    """Record the round robin's choice for lead ``i`` and count it in the rep's load.

    Example: felix's first lead of three reps, two of whom could take it → owner felix, step
    "rule", "rule emea-all → pool emea, felix by weighted round robin (weight 2, 1st lead;
    2 of 3 reps could take it)".
    """
    rep_id = pool.reps[best]
    run.out.step[i] = "rule"
    run.out.reason[i] = (
        f"{head}, {rep_id} by weighted round robin "
        f"(weight {pool.weights[best]:g}, {_ordinal(int(pool.served[best]))} lead; "
        f"{could_take} of {len(pool.reps)} reps could take it)"
    )
    run.out.assign(i, run.loads[rep_id])


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def wait_or_fall_back(
    run: RoutingRun, i: int, head: str, pool: PoolCounters, waiting: bool
) -> None:
    """Nobody in the pool took lead ``i``. If a rep would qualify but is at capacity, the lead
    waits (no owner, oldest first next time); if nobody could take it at all, it goes to the
    pool's fallback owner, else to the fallback queue's owner.

    Example: felix and grace at capacity → step "waiting", "rule emea-all → pool emea full,
    waiting"; both out of office → ops1, step "fallback", "rule emea-all → pool emea has no
    available rep → fallback queue sales-ops".
    """
    if waiting:
        run.out.step[i] = "waiting"
        run.out.reason[i] = f"{head} full, waiting"
        return
    if pool.fallback_owner:
        run.out.step[i] = "pool_fallback"
        run.out.reason[i] = (
            f"{head} has no available rep → pool fallback owner {pool.fallback_owner}"
        )
        run.out.assign(i, run.loads[pool.fallback_owner])
    else:
        run.out.step[i] = "fallback"
        run.out.reason[i] = (
            f"{head} has no available rep → fallback queue {run.rules.fallback.queue}"
        )
        run.out.assign(i, run.loads[run.rules.fallback.owner])


# --------------------------------------------------------------------------- 4. the outputs


def state_frame(pools: dict[str, PoolCounters], loads: dict[str, RepLoad]) -> pd.DataFrame:
    """The state to persist (``STATE_COLUMNS``): one row per (pool, rep), pools and reps in
    the rules' order.

    Example, after the worked example's three DE leads: (emea, felix, 2.0, True, 2, 2),
    (emea, grace, 1.0, True, 1, 1), (emea, hugo, 0.0, True, 0, 0), (ops, ops1, 0.0, False,
    0, 0): pool ops had no turn, so ops1 is not yet known as available there.
    """
    rows = [
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
    return pd.DataFrame(rows, columns=list(STATE_COLUMNS))


def routing_stats(assignments: pd.DataFrame) -> dict[str, Any]:
    """Counts for the run's summary: routed, waiting, per step, per owner, waiting per pool.

    Example: felix, felix, a lead waiting in emea, ops1 by fallback → {"routed": 3,
    "waiting": 1, "by_step": {"rule": 2, "waiting": 1, "fallback": 1}, "by_owner":
    {"felix": 2, "ops1": 1}, "waiting_by_pool": {"emea": 1}}.
    """
    steps = assignments["step"].value_counts().to_dict()
    return {
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
