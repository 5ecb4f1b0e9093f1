"""SLA escalation, pure: who is warned, who is told at level 1, which level-2 timers reassign
and which alert the manager, and who gets a reassigned lead (``leadflow/sla/decide.py`` and
routing's ``choose_owners`` in ``leadflow/routing/reassign.py``, with the real router). No
database, no Prefect."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from leadflow.routing.decide import empty_state, route_leads
from leadflow.routing.reassign import MOVED_COLUMNS, choose_owners, moved_frame
from leadflow.routing.rules import parse_rules
from leadflow.sla import decide
from leadflow.sla.rules import SlaRules

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 2, 16, 1, tzinfo=UTC)  # Monday, 11:01 in New York
ROUTING = parse_rules(
    """
name: test-routing
pools:
  - {name: na}
  - {name: managers}
rules:
  - {name: north-america, when: {field: country, in: [US, CA]}, pool: na}
fallback: {queue: sales-ops, owner: ops}
reps:
  - {id: ann, name: Ann A, email: ann@reps.example, pools: [na], manager: olga}
  - {id: bob, name: Bob B, email: bob@reps.example, pools: [na], manager: olga@reps.example}
  - {id: dan, name: Dan D, email: dan@reps.example, pools: [na], manager: ann}
  - {id: eve, name: Eve E, email: eve@reps.example, pools: [managers], manager: boss@corp.example}
  - {id: olga, name: Olga O, email: olga@reps.example, pools: [managers]}
  - {id: ops, name: Ops, email: ops@reps.example, pools: []}
""",
    "test-routing.yaml",
)
RULES = SlaRules(
    name="test-sla",
    policies=(
        {"name": "hot", "met_by": ["call"], "within": "15m", "escalate_after": "1h"},
        {
            "name": "watch",
            "met_by": ["call"],
            "within": "30m",
            "escalate_after": "2h",
            "escalate": "manager",
        },
    ),
)


def timers(**columns) -> pd.DataFrame:
    """Open timers as ``leadflow.sla.store.open_timers`` reads them."""
    n = len(next(iter(columns.values())))
    base = {
        "id": np.arange(1, n + 1),
        "lead_id": np.arange(101, 101 + n),
        "rep_id": 1,
        "assignment_id": np.arange(201, 201 + n),
        "policy": "hot",
        "started_at": pd.Timestamp(datetime(2026, 11, 2, 15, tzinfo=UTC)),
        "due_at": pd.Timestamp(datetime(2026, 11, 2, 15, 15, tzinfo=UTC)),
        "level": 0,
        "rep_code": "ann",
        "rep_email": "ann@reps.example",
        "rep_name": "Ann A",
        "manager": "olga",
        "status": "routed",
        "first_name": "Lee",
        "last_name": None,
        "company": "Buyer",
    }
    base.update(columns)
    return pd.DataFrame(base)


# --------------------------------------------------------------------------- warn, level 1


def test_one_warning_to_the_owner_of_each_timer() -> None:
    due = timers(rep_email=["ann@reps.example", "bob@reps.example"], company=["Acme", "Bolt"])
    messages = decide.warning_messages(due)
    assert messages["idempotency_key"].tolist() == ["sla:1:warning", "sla:2:warning"]
    assert messages["recipient"].tolist() == ["ann@reps.example", "bob@reps.example"]
    assert messages["subject"].tolist() == [
        "SLA warning: hot for Lee (Acme)",
        "SLA warning: hot for Lee (Bolt)",
    ]
    assert messages["body"][0] == (
        "hot is due at 2026-11-02 15:15 UTC for Lee (Acme), lead 101. "
        "Log your first activity before then."
    )


def test_manager_emails_resolve_codes_and_keep_addresses() -> None:
    stored = [("ann", "ann@old.example"), ("zed", "zed@reps.example"), (None, "x@y")]
    managers = decide.manager_emails(ROUTING.reps, stored)
    assert managers == {
        "olga": "olga@reps.example",  # a rep of the rules: their email
        "olga@reps.example": "olga@reps.example",  # an email: as it is
        "ann": "ann@reps.example",  # the rules win over the stored row
        "boss@corp.example": "boss@corp.example",
    }


def test_level_one_tells_the_owner_and_a_known_manager() -> None:
    late = timers(
        rep_code=["ann", "eve", "ann"],
        rep_email=["ann@reps.example", "eve@reps.example", None],
        manager=["olga", "nobody-known", None],
    )
    reasons = decide.level_one_reasons(late)
    assert reasons[0] == (
        "hot: no qualifying activity by 2026-11-02 15:15 UTC "
        "(started 2026-11-02 15:00 UTC, owner ann)"
    )
    managers = {"olga": "olga@reps.example"}
    messages = decide.level_one_messages(late, reasons, managers)
    # Timer 2's manager is unknown: the owner only; timer 3's owner has no email: nobody.
    assert list(zip(messages["idempotency_key"], messages["recipient"], strict=True)) == [
        ("sla:1:1:owner", "ann@reps.example"),
        ("sla:1:1:manager", "olga@reps.example"),
        ("sla:2:1:owner", "eve@reps.example"),
    ]
    assert messages["body"][0] == f"{reasons[0]}. Lead 101."


def test_breach_rows_one_per_timer() -> None:
    late = timers(rep_id=[1, None])
    breaches = decide.breach_rows(
        late, level=1, action="notified", reasons=["a", "b"], now=NOW, flow_run_id=None
    )
    assert list(breaches.columns) == list(decide.BREACH_COLUMNS)
    assert breaches["timer_id"].tolist() == [1, 2]
    assert breaches["rep_id"].isna().tolist() == [False, True]
    assert breaches["new_rep_id"].isna().all()
    empty = decide.breach_rows(
        late.iloc[:0], level=1, action="notified", reasons=[], now=NOW, flow_run_id=None
    )
    assert empty.empty and list(empty.columns) == list(decide.BREACH_COLUMNS)


# --------------------------------------------------------------------------- level 2


def test_level_two_reassigns_only_routed_leads_of_reassign_policies() -> None:
    late = timers(
        policy=["hot", "hot", "watch", "watch"],
        status=["routed", "accepted", "routed", "qualified"],
    )
    assert decide.reassigning(late, RULES).tolist() == [True, False, False, False]


def test_level_two_alerts_a_known_manager() -> None:
    alert = timers(policy=["watch", "watch"], manager=["olga", "who?"])
    reasons = decide.alert_reasons(alert)
    assert (
        reasons
        == ["watch: still no qualifying activity at the escalation time; manager alerted"] * 2
    )
    messages = decide.alert_messages(alert, reasons, {"olga": "olga@reps.example"})
    assert [(m["idempotency_key"], m["recipient"]) for m in messages] == [
        ("sla:1:2:manager", "olga@reps.example")
    ]
    assert messages[0]["body"] == f"{reasons[0]}. Owner ann, lead 101."


def test_one_reassignment_request_per_lead_from_its_first_timer() -> None:
    late = timers(
        lead_id=[101, 101, 102],
        policy=["hot", "watch", "hot"],
        rep_code=["ann", "ann", "bob"],
        manager=["olga", "olga", None],
    )
    requests = decide.reassign_requests(late)
    assert requests["manager"].isna().tolist() == [False, True]  # no manager: routing decides
    assert requests.drop(columns="manager").to_dict("records") == [
        {
            "lead_id": 101,
            "assignment_id": 201,
            "because": "SLA hot breached by ann",
            "released_reason": "sla: hot level 2",
        },
        {
            "lead_id": 102,
            "assignment_id": 203,
            "because": "SLA hot breached by bob",
            "released_reason": "sla: hot level 2",
        },
    ]


# --------------------------------------------------------------------------- who gets the lead


def requests(held: dict[int, list[str]], manager: str | None = "olga") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lead_id": list(held),
            "assignment_id": [200 + i for i in held],
            "because": [f"SLA hot breached by {codes[-1]}" for codes in held.values()],
            "manager": manager,
            "released_reason": "sla: hot level 2",
        }
    )


def reroute(held: dict[int, list[str]], manager: str | None = "olga") -> pd.DataFrame:
    """Route the leads again with the real router, excluding who held them, then decide."""
    leads = pd.DataFrame(
        {
            "id": list(held),
            "country": "US",
            "queued_at": pd.Timestamp(NOW),
            "exclude": list(held.values()),
        }
    )
    routed = route_leads(leads, ROUTING, empty_state(), NOW, version="v1").assignments
    return choose_owners(routed, requests(held, manager), held, ROUTING, label="sla")


def test_the_rules_route_away_from_everyone_who_held_the_lead() -> None:
    decided = reroute({1: ["ann"], 2: ["ann", "bob"]})
    owners = dict(zip(decided["id"], decided["owner"], strict=True))
    assert owners[1] in {"bob", "dan"} and owners[2] == "dan"
    assert set(decided["step"]) == {"sla_reassign"}
    reason = decided.set_index("id").loc[2, "reason"]
    assert reason.startswith("SLA hot breached by bob → rule north-america → pool na, dan")


def test_nobody_left_goes_to_the_manager() -> None:
    decided = reroute({3: ["ann", "bob", "dan"]})
    (row,) = decided.itertuples()
    assert (row.owner, row.step) == ("olga", "sla_manager")
    assert row.reason == (
        "SLA hot breached by dan; nobody left who has not held it (ann, bob, dan held it) "
        "→ manager olga"
    )


@pytest.mark.parametrize(
    ("manager", "owner", "where"),
    [
        ("olga@reps.example", "olga", "manager olga"),  # a rep's email: that rep
        ("ann", "ops", "fallback queue owner ops (no manager to take it)"),  # held it
        ("boss@corp.example", "ops", "fallback queue owner ops (no manager to take it)"),
        (None, "ops", "fallback queue owner ops (no manager to take it)"),
    ],
)
def test_a_manager_who_cannot_take_it_leaves_it_to_the_fallback_owner(
    manager: str | None, owner: str, where: str
) -> None:
    (row,) = reroute({4: ["ann", "bob", "dan"]}, manager=manager).itertuples()
    assert (row.owner, row.step) == (owner, "sla_manager")
    assert row.reason.endswith(f"→ {where}")


def test_a_full_pool_goes_to_the_manager_as_at_capacity() -> None:
    routed = pd.DataFrame(
        {"id": [5], "owner": [None], "step": ["waiting"], "reason": ["pool na is at capacity"]}
    )
    decided = choose_owners(routed, requests({5: ["ann"]}), {5: ["ann"]}, ROUTING, label="sla")
    (row,) = decided.itertuples()
    assert (row.owner, row.step) == ("olga", "sla_manager")
    assert "the pool is at capacity (ann held it) → manager olga" in row.reason


def test_breaches_name_the_new_owner_per_escalating_timer() -> None:
    decided = pd.DataFrame(
        {
            "id": [101, 102],
            "owner": ["bob", "olga"],
            "step": ["sla_reassign", "sla_manager"],
            "reason": ["moved to bob", "to olga"],
        }
    )
    held = {101: ["ann"], 102: ["ann", "olga"]}
    moved = moved_frame(decided, {"ann": 1, "bob": 2, "olga": 5}, held, label="sla")
    assert list(moved.columns) == list(MOVED_COLUMNS)
    assert moved["rerouted"].tolist() == [True, False]
    assert moved["held_before"].tolist() == [False, True]
    late = timers(lead_id=[101, 101, 102, 103], policy=["hot", "watch", "hot", "hot"])
    breaches = decide.reassigned_breaches(late, moved, NOW, "run-2")
    # Every timer of a moved lead breaches at level 2; lead 103 was not moved (not routed).
    assert breaches[["timer_id", "lead_id", "action", "new_rep_id"]].values.tolist() == [
        [1, 101, "reassigned", 2],
        [2, 101, "reassigned", 2],
        [3, 102, "to_manager", 5],
    ]
    assert breaches["reason"].tolist() == ["moved to bob", "moved to bob", "to olga"]
    # Only a reassignment by the rules to someone who held it would be a gate failure.
    assert breaches["new_rep_held_before"].tolist() == [False, False, False]
    assert set(breaches["level"]) == {2}


def test_a_message_names_a_lead_without_a_company_as_such_never_nan() -> None:
    from types import SimpleNamespace

    from leadflow.sla.decide import who

    frame = pd.DataFrame(
        {
            "lead_id": [7, 8],
            "first_name": ["Lee", None],
            "last_name": ["Smith", None],
            "company": ["Buyer 7", None],
        }
    )
    rows = list(frame.itertuples(index=False))  # pandas reads the missing company as NaN
    assert who(rows[0]) == "Lee Smith (Buyer 7)"
    assert who(rows[1]) == "lead 8 (no company)"
    assert who(SimpleNamespace(lead_id=9, first_name="Ann", last_name=None, company="")) == (
        "Ann (no company)"
    )
