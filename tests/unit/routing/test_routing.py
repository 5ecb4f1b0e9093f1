"""Routing: rules validation and the pure assignment engine (no database, no Prefect)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leadflow.config import ConfigError
from leadflow.routing import decide as routing
from leadflow.routing.decide import empty_state, route_leads
from leadflow.routing.rules import RoutingRule, load_reps_csv, load_rules, parse_rules, with_reps

from helpers import ROOT

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def rules_text(weights: dict[str, float], *, extra_rep: str = "", capacity: str = "") -> str:
    reps = "\n".join(
        f"""  - id: {rep}
    name: Rep {rep}
    email: {rep}@example.com
    pools: [emea]
    weight: {weight}
{capacity}"""
        for rep, weight in weights.items()
    )
    return f"""
pools:
  - name: emea
  - name: ops
rules:
  - name: emea-all
    when: {{field: region, equals: EMEA}}
    pool: emea
fallback: {{queue: sales-ops, owner: ops1}}
reps:
{reps}
{extra_rep}
  - id: ops1
    name: Ops
    email: ops@example.com
    pools: [ops]
"""


def leads(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"id": np.arange(start, start + n), "region": "EMEA", "country": "DE"})


def counts(result) -> dict[str, int]:
    return result.assignments["owner"].value_counts().to_dict()


# --------------------------------------------------------------------------- validation


def test_example_rules_load() -> None:
    rules, version, _ = load_rules(ROOT / "rules" / "routing.yaml")
    assert len(version) == 12
    assert {p.name for p in rules.pools} >= {"na-ent", "emea", "sales-ops"}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("timezone: America/Chicago", "timezone: Mars/Olympus"), "reps[ben-ortiz].timezone"),
        (("territories: [BR]", "territories: [XX]"), "reps[lucas-silva].territories"),
        (("max_open: 300, max_new_per_day: 40", "max_open: -3"), "reps[ben-ortiz].capacity"),
        (("pool: latam", "pool: latamm"), "rules[latam].pool"),
        (("field: region, equals: APAC", "field: regio, equals: APAC"), "rules[apac].when"),
        (("id: jun-tanaka", "id: isha-sharma"), "duplicate rep id"),
        (("pools: [latam]", "pools: []"), "reps[lucas-silva].pools"),
        (
            ("manager: marcus-reed\n    pools: [latam]", "manager: marcus\n    pools: [latam]"),
            "reps[lucas-silva].manager",
        ),
        (("  - name: latam\n", "  - name: latam\n  - name: empty\n"), "pools[empty]"),
    ],
)
def test_bad_rules_are_refused_naming_file_rep_and_field(
    change: tuple[str, str], named: str
) -> None:
    text = (ROOT / "rules" / "routing.yaml").read_text()
    assert change[0] in text
    with pytest.raises(ConfigError) as error:
        parse_rules(text.replace(change[0], change[1], 1), "routing.yaml")
    assert "routing.yaml" in str(error.value)
    assert named in str(error.value)


def test_score_and_temperature_are_fields_of_routing_conditions() -> None:
    text = rules_text({"a": 1}).replace(
        "when: {field: region, equals: EMEA}",
        "when: {all: [{field: temperature, equals: hot}, {field: score, range: [80, null]}]}",
    )
    rules = parse_rules(text, "r.yaml")
    frame = pd.DataFrame({"id": [1, 2], "temperature": ["hot", "hot"], "score": [90, 50]})
    result = route_leads(frame, rules, empty_state(), NOW)
    assert result.assignments["step"].tolist() == ["rule", "fallback"]


def test_reps_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "reps.csv"
    path.write_text(
        "id,name,email,pools,territories,weight,max_open,timezone,working_hours,out_of_office\n"
        "a,A,a@x.com,emea,DE;FR,2,10,Europe/Berlin,mon-fri 09:00-17:00,2026-12-20..2027-01-02\n"
        "ops1,Ops,o@x.com,ops,,,,UTC,,\n"
    )
    reps = load_reps_csv(path)
    assert reps[0].territories == ("DE", "FR") and reps[0].capacity.max_open == 10
    rules = with_reps(parse_rules(rules_text({"b": 1}), "r.yaml"), reps, str(path))
    assert [r.id for r in rules.reps] == ["a", "ops1"]
    path.write_text("id,name,email,timezone\na,A,a@x.com,Nowhere/Land\n")
    with pytest.raises(ConfigError, match=r"row 2 rep 'a'.*timezone"):
        load_reps_csv(path)
    path.write_text("id,name,email\na,A,a@x.com\na,B,b@x.com\n")
    with pytest.raises(ConfigError, match="duplicate rep id"):
        load_reps_csv(path)


# --------------------------------------------------------------------------- fairness


def test_equal_weights_10000_leads_differ_by_at_most_one() -> None:
    rules = parse_rules(rules_text(dict.fromkeys("abcdefg", 1)), "r.yaml")
    got = counts(route_leads(leads(10_000), rules, empty_state(), NOW))
    shares = [got[r] for r in "abcdefg"]
    assert sum(shares) == 10_000 and max(shares) - min(shares) <= 1


def test_weights_2_1_1_within_one_point() -> None:
    rules = parse_rules(rules_text({"a": 2, "b": 1, "c": 1}), "r.yaml")
    got = counts(route_leads(leads(10_000), rules, empty_state(), NOW))
    for rep, share in {"a": 0.5, "b": 0.25, "c": 0.25}.items():
        assert abs(got[rep] / 10_000 - share) <= 0.01


def test_rep_back_from_time_off_gets_fair_share_not_a_backlog() -> None:
    # c (weight 1) is away during the first half of 10,000 leads; a has weight 2, b 1.
    away = "    out_of_office: [{start: 2026-11-01, end: 2026-11-30}]"
    text = rules_text({"a": 2, "b": 1}).replace(
        "  - id: ops1",
        f"  - id: c\n    name: C\n    email: c@x.com\n    pools: [emea]\n{away}\n  - id: ops1",
    )
    rules = parse_rules(text, "r.yaml")
    first = route_leads(leads(5_000), rules, empty_state(), datetime(2026, 11, 15, tzinfo=UTC))
    assert "c" not in counts(first)
    second = route_leads(
        leads(5_000, 5_000), rules, first.reps_state, datetime(2026, 12, 2, tzinfo=UTC)
    )
    got = counts(second)
    assert abs(got["c"] / 5_000 - 0.25) <= 0.01  # weighted share 1/4, not a catch-up
    assert abs(got["a"] / 5_000 - 0.5) <= 0.01


def test_burst_of_100_routes_exactly_like_100_single_arrivals() -> None:
    text = rules_text({"a": 3, "b": 2, "c": 1}, capacity="    capacity: {max_open: 30}")
    rules = parse_rules(text, "r.yaml")
    batch = leads(100)
    batch["region"] = np.where(batch["id"] % 7 == 0, "APAC", "EMEA")  # some to the fallback
    burst = route_leads(batch, rules, empty_state(), NOW)
    state, singles = empty_state(), []
    for i in range(100):
        one = route_leads(batch.iloc[[i]], rules, state, NOW)
        state = one.reps_state
        singles.append(one.assignments)
    single = pd.concat(singles)
    assert burst.assignments["owner"].tolist() == single["owner"].tolist()
    assert burst.assignments["reason"].tolist() == single["reason"].tolist()
    pd.testing.assert_frame_equal(burst.reps_state, state)


def test_deterministic() -> None:
    rules = parse_rules(rules_text({"a": 1.5, "b": 1, "c": 0.5}), "r.yaml")
    one = route_leads(leads(500), rules, empty_state(), NOW)
    two = route_leads(leads(500), rules, empty_state(), NOW)
    pd.testing.assert_frame_equal(one.assignments, two.assignments)


def test_added_rep_starts_at_fair_share_and_removal_keeps_counters() -> None:
    before = parse_rules(rules_text({"a": 1, "b": 1}), "r.yaml")
    first = route_leads(leads(1_000), before, empty_state(), NOW)
    after = parse_rules(rules_text({"a": 1, "b": 1, "c": 1}), "r.yaml")
    second = route_leads(leads(300, 1_000), after, first.reps_state, NOW)
    assert counts(second) == {"a": 100, "b": 100, "c": 100}  # c gets no backlog of 500
    removed = parse_rules(rules_text({"a": 1, "c": 1}), "r.yaml")
    third = route_leads(leads(10, 1_300), removed, second.reps_state, NOW)
    state = third.reps_state.set_index("rep")["served"]
    assert state["a"] == 600 + 5 and state["c"] == 600 + 5  # nobody's counter reset
    assert "b" not in state.index


# --------------------------------------------------------------------------- availability


def test_full_pool_waits_oldest_first_and_is_served_as_capacity_frees() -> None:
    text = rules_text({"a": 1, "b": 1}, capacity="    capacity: {max_open: 2}")
    rules = parse_rules(text, "r.yaml")
    batch = leads(6)
    batch["queued_at"] = pd.to_datetime(
        ["2026-11-20", "2026-11-19", "2026-11-22", "2026-11-18", "2026-11-21", "2026-11-17"],
        utc=True,
    )
    result = route_leads(batch, rules, empty_state(), NOW)
    frame = result.assignments.set_index("id")
    assert set(frame.index[frame["owner"].notna()]) == {5, 3, 1, 0}  # the four oldest
    assert frame.loc[[2, 4], "step"].tolist() == ["waiting", "waiting"]
    assert frame.loc[2, "reason"] == "rule emea-all → pool emea full, waiting"
    assert frame["within_capacity"].all() and (frame["owner_open_after"].dropna() <= 2).all()
    # One lead closed for rep a: the oldest waiting lead (4) goes first.
    state = result.reps_state.copy()
    state.loc[state["rep"] == "a", "open_leads"] = 1
    later = route_leads(batch.loc[[2, 4]], rules, state, NOW).assignments.set_index("id")
    assert later.loc[4, "owner"] == "a" and later.loc[2, "step"] == "waiting"


def test_unavailable_reps_never_get_leads_and_empty_pool_falls_back() -> None:
    inactive = rules_text({"a": 1}).replace(
        "    weight: 1\n", "    weight: 1\n    active: false\n", 1
    )
    rules = parse_rules(inactive, "r.yaml")
    result = route_leads(leads(3), rules, empty_state(), NOW)
    frame = result.assignments
    assert frame["owner"].tolist() == ["ops1"] * 3
    assert frame["reason"].iloc[0] == (
        "rule emea-all → pool emea has no available rep → fallback queue sales-ops"
    )
    assert json.loads(frame["candidates"].iloc[0]) == {"a": "inactive"}


def test_account_owner_first_and_inactive_owner_goes_to_rules() -> None:
    text = rules_text({"a": 1, "b": 1}).replace(
        "    weight: 1\n", "    weight: 1\n    active: false\n", 1
    )
    rules = parse_rules(text, "r.yaml")
    batch = leads(2)
    batch["account_owner"] = ["b", "a"]
    batch["domain"] = ["acme.com", "globex.com"]
    frame = route_leads(batch, rules, empty_state(), NOW).assignments
    assert frame["owner"].tolist() == ["b", "b"]
    assert frame["reason"].iloc[0] == "account owner of acme.com"
    assert frame["reason"].iloc[1].startswith("account owner a inactive → rules; rule emea-all")


def test_territory_filters_candidates() -> None:
    text = rules_text({"a": 1, "b": 1}).replace(
        "    weight: 1\n", "    weight: 1\n    territories: [FR]\n", 1
    )
    rules = parse_rules(text, "r.yaml")
    frame = route_leads(leads(4), rules, empty_state(), NOW).assignments  # all DE
    assert frame["owner"].tolist() == ["b"] * 4
    assert json.loads(frame["candidates"].iloc[0])["a"] == "not their territory"


def test_100k_leads_each_get_exactly_one_decision() -> None:
    """At scale every lead gets one decision (its speed is bench/route.py's, not a test's)."""
    rules, version, _ = load_rules(ROOT / "rules" / "routing.yaml")
    rng = np.random.default_rng(3)
    n = 100_000
    batch = pd.DataFrame(
        {
            "id": np.arange(n),
            "country": rng.choice(np.array(["US", "DE", "GB", "FR", "JP", "BR", "IN"]), n),
            "employees": rng.integers(1, 5000, n),
        }
    )
    batch["region"] = batch["country"].map(
        {
            "US": "NA",
            "DE": "EMEA",
            "GB": "EMEA",
            "FR": "EMEA",
            "JP": "APAC",
            "BR": "LATAM",
            "IN": "APAC",
        }
    )
    result = route_leads(batch, rules, empty_state(), NOW, version=version)
    assert len(result.assignments) == n
    assert sorted(result.assignments["id"]) == list(range(n))


def test_routed_suite_passes_good_assignments_and_quarantines_ownerless() -> None:
    from leadflow import quality

    rules = parse_rules(rules_text({"a": 1, "b": 1}), "r.yaml")
    result = route_leads(leads(20), rules, empty_state(), NOW, version="v1")
    frame = routing.gate_frame(result, rules)
    assert len(quality.split_rows("routed", frame).quarantined) == 0
    broken = frame.copy()
    broken.loc[broken.index[0], "owner"] = None
    broken.loc[broken.index[1], "rule_and_pool_named"] = False
    split = quality.split_rows("routed", broken)
    assert sorted(split.quarantined["id"]) == [0, 1]
    reasons = split.quarantined.set_index("id")["reasons"]
    assert reasons[0] == ["owner_present"] and reasons[1] == ["rule_and_pool_named"]


def test_generated_reps_load_as_csv_and_someone_is_away_now(tmp_path: Path) -> None:
    from app.generate_reps import reps_frame

    frame = reps_frame(np.random.default_rng(7), NOW)
    path = tmp_path / "reps.csv"
    frame.to_csv(path, index=False)
    reps = load_reps_csv(path)
    rules, _, _ = load_rules(ROOT / "rules" / "routing.yaml")
    merged = with_reps(rules, reps, str(path))
    away = [rep.id for rep in merged.reps if rep.out_of_office_at(NOW)]
    assert len(away) == 2
    assert len({rep.timezone for rep in merged.reps}) >= 6
    assert merged.rep("ava-ng").capacity.max_open == 400 and merged.rep("ava-ng").weight == 2


def test_dry_run_diff_per_rep_rule_and_changed_leads() -> None:
    before = parse_rules(rules_text({"a": 1, "b": 1}), "r.yaml")
    after = parse_rules(rules_text({"a": 3, "b": 1}), "r.yaml")
    current = route_leads(leads(8), before, empty_state(), NOW).assignments
    proposed = route_leads(leads(8), after, empty_state(), NOW).assignments
    diff = routing.diff_assignments(current, proposed)
    assert diff.per_rep.set_index("rep")["change"].to_dict() == {"a": 2, "b": -2}
    assert diff.per_rule["change"].tolist() == [0]
    assert len(diff.changed) == 2 and set(diff.changed["owner_after"]) == {"a"}
    text = diff.to_markdown()
    assert "| rep | before | after | change |" in text and "would change owner (2)" in text


def test_a_rule_on_temperature_alone_loads() -> None:
    """A top-level `{field: temperature, ...}` used to be re-checked by scoring's field list
    after the routing validator had allowed it, and refused."""
    rule = RoutingRule.model_validate(
        {"name": "hot", "when": {"field": "temperature", "equals": "hot"}, "pool": "p"}
    )
    assert rule.when is not None and rule.when.field == "temperature"


def test_an_account_owner_lead_with_neither_domain_nor_company_is_explained_without_nan() -> None:
    rules = parse_rules(rules_text({"a": 1, "b": 1}), "r.yaml")
    batch = leads(3)
    batch["account_owner"] = ["b", "b", "a"]
    batch["domain"] = [None, None, "acme.com"]
    batch["company"] = ["Globex", None, "Acme"]  # a name beside a missing one: pandas reads NaN
    reasons = route_leads(batch, rules, empty_state(), NOW).assignments["reason"].tolist()
    assert reasons == [
        "account owner of Globex",
        "account owner of the matched account",
        "account owner of acme.com",
    ]
