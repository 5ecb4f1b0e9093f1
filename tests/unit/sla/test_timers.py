"""SLA timers, pure (``leadflow/sla/decide.py``): which policies start, the deadlines in the
owner's business time (working hours, a public holiday, the weekend), what met a timer and
who breached by meeting it late. No database, no Prefect."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from leadflow.business_time import calendar_of
from leadflow.routing.rules import Rep
from leadflow.sla import decide
from leadflow.sla.rules import SlaRules

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)  # Monday 10:00 in New York
ANN = Rep(
    id="ann",
    name="Ann A",
    email="ann@reps.example",
    timezone="America/New_York",
    working_hours={"mon-fri": ["09:00-17:00"]},
    country="US",
)
CEM = Rep(
    id="cem",
    name="Cem C",
    email="cem@reps.example",
    timezone="Europe/Berlin",
    working_hours={"mon-fri": ["09:00-17:00"]},
)
CALENDARS = {1: calendar_of(ANN), 3: calendar_of(CEM)}  # by reps.id
RULES = SlaRules(
    name="test-sla",
    warn_at=0.8,
    policies=(
        {
            "name": "hot-first-touch",
            "when": {"field": "temperature", "equals": "hot"},
            "met_by": ["call", "email", "accept"],
            "within": "15m",
            "escalate_after": "1h",
        },
        {"name": "acceptance", "met_by": ["accept", "reject"], "within": "2d"},
        {
            "name": "after-accept",
            "start": "accepted",
            "met_by": ["call"],
            "within": "4h",
            "escalate_after": "1d",
            "escalate": "manager",
        },
    ),
)


def utc(*args: int) -> pd.Timestamp:
    return pd.Timestamp(datetime(*args, tzinfo=UTC))


def started(rep_id: int, at: datetime, *, lead: int = 7, assignment: int = 70) -> pd.DataFrame:
    return pd.DataFrame(
        {"lead_id": [lead], "assignment_id": [assignment], "rep_id": [rep_id], "started_at": [at]}
    )


def policy(name: str):
    return next(p for p in RULES.policies if p.name == name)


# --------------------------------------------------------------------------- deadlines


def test_deadlines_inside_working_hours_are_plain_minutes() -> None:
    (row,) = decide.deadlines(
        started(1, NOW), policy("hot-first-touch"), RULES, CALENDARS, NOW
    ).itertuples()
    assert (row.warn_at, row.due_at, row.escalate_at) == (
        utc(2026, 11, 2, 15, 12),  # 80 % of 15 minutes
        utc(2026, 11, 2, 15, 15),
        utc(2026, 11, 2, 16, 0),
    )
    assert (row.lead_id, row.assignment_id, row.rep_id, row.level) == (7, 70, 1, 0)


def test_deadlines_carry_over_the_weekend_in_the_owners_time_zone() -> None:
    # Friday 16:55 in New York: 5 minutes that day, the rest from Monday 09:00.
    friday = datetime(2026, 11, 27, 21, 55, tzinfo=UTC)
    (row,) = decide.deadlines(
        started(1, friday), policy("hot-first-touch"), RULES, CALENDARS, friday
    ).itertuples()
    assert row.warn_at == utc(2026, 11, 30, 14, 7)  # Monday 09:07 New York
    assert row.due_at == utc(2026, 11, 30, 14, 10)  # Monday 09:10
    assert row.escalate_at == utc(2026, 11, 30, 14, 55)  # Monday 09:55
    # The same instant is Saturday 22:55 in Berlin: Cem's clock starts on Monday 09:00 CET.
    (row,) = decide.deadlines(
        started(3, friday), policy("hot-first-touch"), RULES, CALENDARS, friday
    ).itertuples()
    assert row.due_at == utc(2026, 11, 30, 8, 15)


def test_a_public_holiday_is_not_business_time() -> None:
    # Wednesday 16:55 before Thanksgiving (Thu 2026-11-26, a US holiday for Ann).
    wednesday = datetime(2026, 11, 25, 21, 55, tzinfo=UTC)
    (row,) = decide.deadlines(
        started(1, wednesday), policy("hot-first-touch"), RULES, CALENDARS, wednesday
    ).itertuples()
    assert row.due_at == utc(2026, 11, 27, 14, 10)  # Friday 09:10, Thursday skipped


def test_a_policy_without_escalation_has_no_escalation_instant() -> None:
    (row,) = decide.deadlines(
        started(1, NOW), policy("acceptance"), RULES, CALENDARS, NOW
    ).itertuples()
    assert pd.isna(row.escalate_at)
    # Two business days of 8 hours from Monday 10:00 New York: Wednesday 10:00.
    assert row.due_at == utc(2026, 11, 4, 15, 0)


# --------------------------------------------------------------------------- start


def assignments(temperatures: list[str], **columns) -> pd.DataFrame:
    n = len(temperatures)
    return pd.DataFrame(
        {
            "assignment_id": np.arange(100, 100 + n),
            "lead_id": np.arange(1, 1 + n),
            "rep_id": 1,
            "assigned_at": pd.Timestamp(NOW),
            "status": "routed",
            "status_changed_at": pd.Timestamp(NOW),
            "temperature": temperatures,
            **columns,
        }
    )


def test_which_policies_start_for_new_assignments() -> None:
    fresh = assignments(["hot", "warm"])
    timers = decide.timers_to_start(fresh, fresh.iloc[:0], RULES, CALENDARS, NOW)
    # Policies in order: the hot lead gets both start-at-assignment policies, the warm one
    # only the policy for every lead; nothing starts at acceptance here.
    assert list(zip(timers["lead_id"], timers["policy"], strict=True)) == [
        (1, "hot-first-touch"),
        (1, "acceptance"),
        (2, "acceptance"),
    ]
    assert list(timers.columns) == list(decide.TIMER_COLUMNS)
    assert (timers["started_at"] == pd.Timestamp(NOW)).all()


def test_accepted_clocks_start_at_the_acceptance_else_the_status_change() -> None:
    accept = datetime(2026, 11, 2, 16, tzinfo=UTC)
    changed = datetime(2026, 11, 2, 17, tzinfo=UTC)
    accepted = assignments(
        ["warm", "hot"], status="accepted", accepted_at=[accept, None], status_changed_at=changed
    )
    timers = decide.timers_to_start(accepted.iloc[:0], accepted, RULES, CALENDARS, NOW)
    assert list(timers["policy"]) == ["after-accept", "after-accept"]
    assert list(timers["started_at"]) == [pd.Timestamp(accept), pd.Timestamp(changed)]
    # 4 business hours from 11:00 New York: 15:00; escalation a business day (8h) later.
    assert list(timers["due_at"]) == [utc(2026, 11, 2, 20, 0), utc(2026, 11, 2, 21, 0)]


def test_nothing_to_start_is_an_empty_frame_of_timers() -> None:
    empty = assignments([]).iloc[:0]
    timers = decide.timers_to_start(empty, empty, RULES, CALENDARS, NOW)
    assert timers.empty and list(timers.columns) == list(decide.TIMER_COLUMNS)


# --------------------------------------------------------------------------- meet


def met(**overrides) -> pd.DataFrame:
    """Timers (started Monday 15:00 UTC, due 15:15) with the first activity that met them."""
    rows = {
        "id": [11, 12, 13, 14],
        "lead_id": [1, 2, 3, 4],
        "rep_id": [1, 1, 1, 1],
        "policy": "hot-first-touch",
        "started_at": pd.Timestamp(NOW),
        "due_at": utc(2026, 11, 2, 15, 15),
        "met_at": [None, None, None, utc(2026, 11, 2, 15, 30)],
        "level": [0, 0, 1, 1],
        "closed_at": [None, None, None, utc(2026, 11, 2, 15, 35)],
        "closed_reason": [None, None, None, "met"],
        "activity_id": [101, 102, 103, 104],
        "activity_type": ["call", "email", "call", "call"],
        "occurred_at": [
            utc(2026, 11, 2, 15, 10),  # on time
            utc(2026, 11, 2, 15, 20),  # late
            utc(2026, 11, 3, 14, 5),  # late, and already notified at level 1
            utc(2026, 11, 2, 15, 9),  # logged late, happened before what met it
        ],
    }
    rows.update(overrides)
    return pd.DataFrame(rows)


def test_business_minutes_to_the_first_activity() -> None:
    minutes = decide.business_minutes(met(), CALENDARS)
    # Tuesday 09:05 New York: 7 hours on Monday from 10:00, 5 minutes on Tuesday.
    assert minutes.tolist() == [10.0, 20.0, 425.0, 9.0]


def test_met_late_breaches_only_timers_met_after_due_and_not_breached_yet() -> None:
    first = met()
    breaches = decide.met_late(first, decide.business_minutes(first, CALENDARS), NOW, "run-1")
    assert breaches[["timer_id", "lead_id", "level", "action"]].values.tolist() == [
        [12, 2, 1, "met_late"]
    ]
    (reason,) = breaches["reason"]
    assert reason == (
        "hot-first-touch: first activity email came after the due time (20 business minutes)"
    )
    assert breaches["flow_run_id"].tolist() == ["run-1"]
    assert breaches["recorded_at"].tolist() == [pd.Timestamp(NOW)]


def test_met_updates_close_open_timers_and_keep_earlier_closings() -> None:
    first = met()
    later = datetime(2026, 11, 3, 15, tzinfo=UTC)
    update = decide.met_updates(first, decide.business_minutes(first, CALENDARS), later)
    assert update["met_by"].tolist() == [101, 102, 103, 104]
    assert update["closed_reason"].tolist() == ["met", "met", "met", "met"]
    assert list(pd.to_datetime(update["closed_at"], utc=True)) == [
        pd.Timestamp(later),
        pd.Timestamp(later),
        pd.Timestamp(later),
        utc(2026, 11, 2, 15, 35),  # closed when first met; only met_at moves earlier
    ]
    assert list(pd.to_datetime(update["met_at"], utc=True))[3] == utc(2026, 11, 2, 15, 9)


def test_within_keeps_the_leads_the_check_holds() -> None:
    frame = pd.DataFrame({"lead_id": [1, 2, 3], "x": ["a", "b", "c"]})
    assert decide.within(frame, None) is frame
    assert decide.within(frame, frozenset({3, 1}))["x"].tolist() == ["a", "c"]
    assert decide.within(frame, frozenset()).empty
