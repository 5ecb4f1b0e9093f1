"""The named steps of ``route_leads``, each on the worked example of its docstring: pool
emea with felix (weight 2, DE and FR), grace (weight 1, anywhere) and hugo (weight 1, FR
only); rule emea-all (region EMEA → emea); fallback queue sales-ops owned by ops1."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from leadflow.routing import decide as routing
from leadflow.routing.decide import Decisions, empty_state, route_leads
from leadflow.routing.rules import RoutingRules, parse_rules

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
AWAY = "    out_of_office: [{start: 2026-11-01, end: 2026-11-30}]\n"


def world(*, hugo: str = "", felix: str = "", grace: str = "", pool: str = "") -> RoutingRules:
    """The worked example's rules; extra YAML lines per rep (out of office, capacity) and
    for pool emea (a fallback owner)."""
    text = f"""
pools:
  - name: emea
{pool}  - name: ops
rules:
  - name: emea-all
    when: {{field: region, equals: EMEA}}
    pool: emea
fallback: {{queue: sales-ops, owner: ops1}}
reps:
  - id: felix
    name: Felix Weber
    email: felix@example.com
    pools: [emea]
    territories: [DE, FR]
    weight: 2
{felix}  - id: grace
    name: Grace Murphy
    email: grace@example.com
    pools: [emea]
{grace}  - id: hugo
    name: Hugo Dubois
    email: hugo@example.com
    pools: [emea]
    territories: [FR]
{hugo}  - id: ops1
    name: Ops
    email: ops@example.com
    pools: [ops]
"""
    return parse_rules(text, "world.yaml")


def de_leads(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": np.arange(1, n + 1), "region": "EMEA", "country": "DE"})


def start(rules: RoutingRules, leads: pd.DataFrame, state: pd.DataFrame | None = None):
    """What ``route_leads`` hands its per-lead steps, before the first lead."""
    batch = routing.allocate_batch(leads, rules)
    loads, pools = routing.load_state(rules, empty_state() if state is None else state, NOW)
    return routing.RoutingRun(rules, batch, loads, pools, Decisions.empty(len(leads)))


def test_route_leads_worked_example() -> None:
    leads = pd.concat(
        [de_leads(3), pd.DataFrame({"id": [4], "region": ["APAC"], "country": ["JP"]})],
        ignore_index=True,
    )
    frame = route_leads(leads, world(), empty_state(), NOW).assignments
    assert frame["owner"].tolist() == ["felix", "felix", "grace", "ops1"]
    assert frame["step"].tolist() == ["rule", "rule", "rule", "fallback"]
    assert frame["reason"].iloc[0] == (
        "rule emea-all → pool emea, felix by weighted round robin "
        "(weight 2, 1st lead; 2 of 3 reps could take it)"
    )
    assert json.loads(frame["candidates"].iloc[2])["hugo"] == "not their territory"
    assert frame["reason"].iloc[3] == "no rule matched → fallback queue sales-ops"


def test_allocate_batch_orders_allocates_and_reads_the_columns() -> None:
    leads = pd.DataFrame(
        {
            "id": [3, 1, 2],
            "queued_at": pd.to_datetime(
                ["2026-11-23 10:05", "2026-11-23 10:00", "2026-11-23 10:00"], utc=True
            ),
            "region": ["EMEA", "APAC", "EMEA"],
            "country": ["DE", "FR", "DE"],
            "exclude": [None, None, ["grace"]],
            "domain": ["acme.com", None, None],
            "company": ["Acme", "Globex", None],
            "account_owner": ["grace", "", np.nan],
        }
    )
    batch = routing.allocate_batch(leads, world())
    assert batch.order == [1, 2, 0]
    assert batch.rule_of == [0, -1, 0]
    assert batch.eligible["hugo"]["territory"] == [False, True, False]
    assert batch.eligible["grace"] == {k: [True] * 3 for k in ("territory", "industry", "segment")}
    assert batch.exclude == [frozenset(), frozenset(), frozenset({"grace"})]
    assert batch.where[:2] == ["acme.com", "Globex"] and pd.isna(batch.where[2])
    assert batch.account_owner == ["grace", None, None]
    skipping = world().model_copy(update={"account_owner": False})
    assert routing.allocate_batch(leads, skipping).account_owner == [None, None, None]


def test_routing_order_without_time_or_id_is_input_order() -> None:
    assert routing.routing_order(pd.DataFrame({"region": ["A", "B", "C"]})).tolist() == [0, 1, 2]
    by_id = pd.DataFrame({"id": [9, 4, 6]})
    assert routing.routing_order(by_id).tolist() == [1, 2, 0]


def test_load_state_reads_counters_and_marks_new_reps_unavailable() -> None:
    state = pd.DataFrame([("emea", "felix", 4.0, True, 12, 3)], columns=list(empty_state().columns))
    loads, pools = routing.load_state(world(hugo=AWAY), state, NOW)
    seen = {rep: (load.unavailable, load.open_leads, load.new_today) for rep, load in loads.items()}
    assert seen == {
        "felix": (None, 12, 3),
        "grace": (None, 0, 0),
        "hugo": ("out of office", 0, 0),
        "ops1": (None, 0, 0),
    }
    emea = pools["emea"]
    assert (emea.reps, emea.weights) == (["felix", "grace", "hugo"], [2.0, 1.0, 1.0])
    assert (emea.served, emea.available) == ([4.0, 0.0, 0.0], [True, False, False])
    assert emea.fallback_owner is None


def test_try_account_owner_takes_or_says_why_not() -> None:
    leads = de_leads(3).assign(
        account_owner=["grace", "hugo", None], domain=["acme.com", "globex.com", None]
    )
    run = start(world(hugo=AWAY), leads)
    assert routing.try_account_owner(run, 0) == (True, "")
    assert (run.out.owner[0], run.out.step[0]) == ("grace", "account_owner")
    assert run.out.reason[0] == "account owner of acme.com"
    assert run.out.candidates[0] == '{"grace": "assigned"}'
    assert run.loads["grace"].open_leads == 1 and run.out.open_after[0] == 1
    assert routing.try_account_owner(run, 1) == (
        False,
        "account owner hugo out of office → rules; ",
    )
    assert routing.try_account_owner(run, 2) == (False, "")
    assert run.out.owner[1:] == [None, None]


def test_try_account_owner_is_off_when_the_rules_say_so() -> None:
    rules = world().model_copy(update={"account_owner": False})
    run = start(rules, de_leads(1).assign(account_owner=["grace"]))
    assert routing.try_account_owner(run, 0) == (False, "")


def test_account_owner_blocked_reasons() -> None:
    state = pd.DataFrame([("emea", "felix", 0.0, True, 40, 0)], columns=list(empty_state().columns))
    rules = world(hugo=AWAY, felix="    capacity: {max_open: 40}\n")
    loads, _ = routing.load_state(rules, state, NOW)
    assert routing.account_owner_blocked("grace", frozenset({"grace"}), loads) == "held it before"
    assert routing.account_owner_blocked("zoe", frozenset(), loads) == "not in the routing rules"
    assert routing.account_owner_blocked("hugo", frozenset(), loads) == "out of office"
    assert routing.account_owner_blocked("felix", frozenset(), loads) == "at capacity (40/40 open)"
    assert routing.account_owner_blocked("grace", frozenset(), loads) is None


def test_weighted_round_robin_picks_the_least_served_for_weight() -> None:
    run = start(world(), de_leads(1))
    pool = run.pools["emea"]
    best, candidates, could_take, waiting = routing.weighted_round_robin(
        pool, run.loads, run.batch.eligible, frozenset(), 0
    )
    assert (best, could_take, waiting) == (0, 2, False)
    assert list(candidates.items()) == [
        ("hugo", "not their territory"),
        ("felix", "assigned"),
        ("grace", "not their turn"),
    ]
    assert pool.served == [1.0, 0.0, 0.0]
    best, candidates, _, _ = routing.weighted_round_robin(
        pool, run.loads, run.batch.eligible, frozenset({"felix"}), 0
    )
    assert best == 1 and candidates["felix"] == "held it before"


def test_weighted_round_robin_waits_for_capacity_but_not_for_time_off() -> None:
    full = "    capacity: {max_open: 0}\n"
    run = start(world(felix=full, grace=full), de_leads(1))
    best, candidates, could_take, waiting = routing.weighted_round_robin(
        run.pools["emea"], run.loads, run.batch.eligible, frozenset(), 0
    )
    assert (best, could_take, waiting) == (-1, 0, True)
    assert candidates["felix"] == "at capacity (0/0 open)"
    run = start(world(felix=AWAY, grace=AWAY), de_leads(1))
    best, candidates, _, waiting = routing.weighted_round_robin(
        run.pools["emea"], run.loads, run.batch.eligible, frozenset(), 0
    )
    assert (best, waiting) == (-1, False)
    assert candidates == {
        "felix": "out of office",
        "grace": "out of office",
        "hugo": "not their territory",
    }


def test_start_turn_lifts_a_returning_rep_to_the_fair_level() -> None:
    _, pools = routing.load_state(world(), empty_state(), NOW)
    loads, _ = routing.load_state(world(), empty_state(), NOW)
    pool = pools["emea"]
    pool.served, pool.available = [10.0, 5.0, 1.0], [True, True, False]
    assert routing.start_turn(pool, loads) == [None, None, None]
    assert pool.served == [10.0, 5.0, 5.0]  # min(10/2, 5/1) * 1, not a backlog from 1
    assert pool.available == [True, True, True]
    loads["grace"].unavailable = "out of office"
    assert routing.start_turn(pool, loads) == [None, "out of office", None]
    assert pool.available == [True, False, True]


def test_wait_or_fall_back_reasons() -> None:
    full = "    capacity: {max_open: 0}\n"
    waiting = route_leads(de_leads(1), world(felix=full, grace=full), empty_state(), NOW)
    row = waiting.assignments.iloc[0]
    assert (row["owner"], row["step"]) == (None, "waiting")
    assert row["reason"] == "rule emea-all → pool emea full, waiting"
    away = route_leads(de_leads(1), world(felix=AWAY, grace=AWAY), empty_state(), NOW)
    row = away.assignments.iloc[0]
    assert (row["owner"], row["step"]) == ("ops1", "fallback")
    assert row["reason"] == (
        "rule emea-all → pool emea has no available rep → fallback queue sales-ops"
    )
    rules = world(felix=AWAY, grace=AWAY, pool="    fallback_owner: hugo\n")
    row = route_leads(de_leads(1), rules, empty_state(), NOW).assignments.iloc[0]
    assert (row["owner"], row["step"]) == ("hugo", "pool_fallback")
    assert row["reason"].endswith("has no available rep → pool fallback owner hugo")


def test_state_frame_after_the_worked_example() -> None:
    result = route_leads(de_leads(3), world(), empty_state(), NOW)
    rows = [tuple(row) for row in result.reps_state.itertuples(index=False)]
    assert rows == [
        ("emea", "felix", 2.0, True, 2, 2),
        ("emea", "grace", 1.0, True, 1, 1),
        ("emea", "hugo", 0.0, True, 0, 0),
        ("ops", "ops1", 0.0, False, 0, 0),  # pool ops had no turn yet
    ]


def test_routing_stats_example() -> None:
    assignments = pd.DataFrame(
        {
            "owner": ["felix", "felix", None, "ops1"],
            "step": ["rule", "rule", "waiting", "fallback"],
            "pool": ["emea", "emea", "emea", None],
        }
    )
    assert routing.routing_stats(assignments) == {
        "routed": 3,
        "waiting": 1,
        "by_step": {"rule": 2, "waiting": 1, "fallback": 1},
        "by_owner": {"felix": 2, "ops1": 1},
        "waiting_by_pool": {"emea": 1},
    }


def test_decisions_assign_counts_the_load_and_flags_going_over_capacity() -> None:
    rules = world(felix="    capacity: {max_open: 1}\n")
    loads, _ = routing.load_state(rules, empty_state(), NOW)
    out = Decisions.empty(3)
    out.step[0] = "rule"
    out.assign(0, loads["felix"])
    assert (out.owner[0], out.open_after[0], out.max_open[0], out.within[0]) == (
        "felix",
        1,
        1,
        True,
    )
    out.step[1] = "fallback"  # the fallback queue's owner takes leads past capacity
    out.assign(1, loads["felix"])
    assert (out.open_after[1], out.within[1]) == (2, True)
    out.step[2] = "rule"  # any other step past capacity is what the gate catches
    out.assign(2, loads["felix"])
    assert (out.open_after[2], out.within[2]) == (3, False)
    assert loads["felix"].new_today == 3
    assert np.isnan(Decisions.empty(1).max_open[0])


def test_route_lead_falls_from_an_unknown_account_owner_to_the_rules() -> None:
    leads = pd.concat(
        [
            de_leads(1).assign(account_owner=["zoe"]),
            pd.DataFrame({"id": [2], "region": ["APAC"], "country": ["JP"]}),
        ],
        ignore_index=True,
    )
    run = start(world(), leads)
    routing.route_lead(run, 0)
    routing.route_lead(run, 1)
    assert run.out.owner == ["felix", "ops1"]
    assert run.out.reason[0].startswith(
        "account owner zoe not in the routing rules → rules; rule emea-all → pool emea, felix "
    )
    assert (run.out.rule[0], run.out.pool[0]) == ("emea-all", "emea")
    assert (run.out.rule[1], run.out.step[1]) == (None, "fallback")
    assert run.out.reason[1] == "no rule matched → fallback queue sales-ops"
