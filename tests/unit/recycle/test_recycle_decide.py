"""Recycling's pure steps, one at a time, and ``recycle_batch`` over them on a small batch
(stalling itself and the writes are in flows/test_recycle.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from leadflow.recycle import decide
from leadflow.recycle.hop import RecycleContext, RecycleInputs, recycle_batch
from leadflow.recycle.rules import RecycleRules

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
RULES = RecycleRules(name="test", max_recycles=2)  # release the owner, halve the score
CADENCE = RecycleRules(name="test", max_recycles=2, after_max="cadence", after_max_cadence="long")


def going(**columns) -> pd.DataFrame:
    """Three leads going back: 1 never recycled, 2 twice before, 3 without a score."""
    frame = pd.DataFrame(
        {
            "id": pd.Series([1, 2, 3], dtype="int64"),
            "status": ["accepted", "routed", "lost"],
            "owner_rep_id": [5.0, 6.0, np.nan],
            "score": [71.0, 30.0, np.nan],
            "temperature": ["hot", "cold", "warm"],
            "recycle_count": [np.nan, 2.0, 0.0],
            "code": ["not_now", "not_accepted", "lost: timing"],
        }
    )
    return frame.assign(**columns)


def assignments() -> pd.DataFrame:
    t = pd.Timestamp
    return pd.DataFrame(
        {
            "id": pd.Series([10, 11, 12, 13], dtype="int64"),
            "lead_id": pd.Series([1, 1, 2, 4], dtype="int64"),
            "rep_code": ["a", "b", "c", "d"],
            "assigned_at": [t("2026-01-01", tz="UTC")] * 4,
            "released_at": [t("2026-01-10", tz="UTC"), pd.NaT, t("2026-02-01", tz="UTC"), pd.NaT],
            "released_reason": ["rejected: busy", None, "sla: breached", None],
            "avoid_until": [pd.NaT, pd.NaT, t("2026-04-01", tz="UTC"), pd.NaT],
        }
    )


def test_the_leads_going_back_are_those_with_a_reason():
    leads = going().drop(columns=["code"])
    reasons = pd.Series([None, "not_accepted", None], dtype=object)
    back = decide.going_back(leads, reasons)
    assert back["id"].tolist() == [2]
    assert back["code"].tolist() == ["not_accepted"]


def test_past_max_recycles_a_lead_is_disqualified_or_stays_in_nurture():
    count = decide.recycle_count(going())
    assert count.tolist() == [1, 3, 1]
    over = count > RULES.max_recycles
    assert decide.next_status(over, RULES).tolist() == ["nurturing", "disqualified", "nurturing"]
    assert decide.next_status(over, CADENCE).tolist() == ["nurturing"] * 3


@pytest.mark.parametrize(
    ("score", "after"),
    [
        ({"action": "decay", "factor": 0.5}, [35.5, 15.0, None]),
        ({"action": "decay", "factor": 0.333}, [23.64, 9.99, None]),
        ({"action": "reset"}, [0.0, 0.0, None]),
        ({"action": "keep"}, [71.0, 30.0, None]),
    ],
)
def test_the_score_decays_resets_or_stays_and_no_score_stays_none(score, after):
    rules = RecycleRules(name="test", score=score)
    got = decide.recycled_score(going()["score"], rules)
    assert [None if pd.isna(v) else v for v in got] == after


def test_the_temperature_follows_the_new_score_or_stays_without_one():
    score = pd.Series([75.0, 40.0, 35.5, np.nan])
    before = pd.Series(["cold", "cold", "hot", "warm"])
    assert decide.temperature_of(score, before, hot=70, warm=40).tolist() == [
        "hot",
        "warm",
        "cold",
        "warm",
    ]


def test_the_first_step_records_the_reason_the_score_before_and_the_new_fields():
    back = going()
    changes = decide.recycled(back, decide.recycle_count(back), RULES, hot=70, warm=40)
    assert changes["to_status"].tolist() == ["recycled"] * 3
    assert changes["reason"].tolist() == [
        "recycled: not_now",
        "recycled: not_accepted",
        "recycled: lost: timing",
    ]
    assert changes["details"].tolist() == [
        {"recycle_count": 1, "score_before": 71.0},
        {"recycle_count": 3, "score_before": 30.0},
        {"recycle_count": 1, "score_before": None},
    ]
    assert changes["temperature"].tolist() == ["cold", "cold", "warm"]  # 35.5, 15, none
    assert changes["owner_rep_id"].isna().all()  # owner: release
    kept = decide.recycled(
        back, decide.recycle_count(back), RULES.model_copy(update={"owner": "keep"}), 70, 40
    )
    assert kept["owner_rep_id"].tolist()[:2] == [5, 6]


@pytest.mark.parametrize(
    ("rules", "second"),
    [
        (RULES, "recycled more than 2 times"),
        (CADENCE, "recycled more than 2 times: long-term cadence long"),
    ],
)
def test_the_second_step_says_why_the_lead_goes_where_it_goes(rules, second):
    back = going()
    count = decide.recycle_count(back)
    over = count > rules.max_recycles
    then = decide.next_status(over, rules)
    changes = decide.recycled(back, count, rules, 70, 40)
    following = decide.back_to_nurture(changes, back, over, then, rules)
    assert following["reason"].tolist() == [
        "back to nurture: not_now",
        second,
        "back to nurture: lost: timing",
    ]
    assert following["from_status"].tolist() == ["recycled"] * 3
    assert decide.long_term_leads(changes, over, then).tolist() == ([2] if rules is CADENCE else [])


def test_open_assignments_end_with_the_reason_and_givers_back_cool_down():
    back = going()
    held = decide.assignments_of(assignments(), back["id"])
    assert held["id"].tolist() == [10, 11, 12]  # lead 4 is not going back
    stamp = pd.Timestamp(NOW)
    release = decide.releases(held, back, RULES, stamp)
    assert release["id"].tolist() == [11]
    assert release["released_reason"].tolist() == ["recycled: not_now"]
    assert release["released_at"].tolist() == [stamp]
    kept = decide.releases(held, back, RULES.model_copy(update={"owner": "keep"}), stamp)
    assert kept["released_reason"].tolist() == ["recycled: not_now (owner kept as contact)"]
    stopped = decide.stopped(held)
    assert stopped.to_dict("list") == {"assignment_id": [11], "lead_id": [1]}
    # Rejected on 10 January, 90 days: 10 April. Assignment 12 had its cool-down already.
    cooldown = decide.cooldowns(held, RULES)
    assert cooldown["id"].tolist() == [10]
    assert cooldown["avoid_until"].tolist() == [pd.Timestamp("2026-04-10", tz="UTC")]


def test_the_gate_frame_and_the_counts():
    back = going()
    count = decide.recycle_count(back)
    over = count > RULES.max_recycles
    then = decide.next_status(over, RULES)
    changes = decide.recycled(back, count, RULES, 70, 40)
    checked = decide.gate_frame(changes, back, count, over, then, RULES)
    assert checked["next_status"].tolist() == ["nurturing", "disqualified", "nurturing"]
    assert checked["owner_cleared"].all() and checked["within_max"].all()
    looked_at = pd.DataFrame({"id": range(5)})
    stats = decide.batch_stats(looked_at, back, then, decide.long_term_leads(changes, over, then))
    assert stats == {
        "recycled": 2,
        "disqualified": 1,
        "long_term": 0,
        "looked_at": 5,
        "reason:not_now": 1,
        "reason:not_accepted": 1,
        "reason:lost": 1,
        "from:accepted": 1,
        "from:routed": 1,
        "from:lost": 1,
    }


def test_recycle_batch_runs_the_steps_in_order():
    """A routed lead never accepted for 6 days with the 5-day limit goes back."""
    leads = pd.DataFrame(
        {
            "id": pd.Series([1, 2], dtype="int64"),
            "status": ["routed", "routed"],
            "status_changed_at": pd.to_datetime(["2026-02-23 12:00", "2026-02-28 12:00"], utc=True),
            "owner_rep_id": [5.0, 6.0],
            "score": [80.0, 80.0],
            "temperature": ["hot", "hot"],
            "recycle_count": [np.nan, np.nan],
        }
    )
    acts = pd.DataFrame(
        {
            "lead_id": pd.Series([], dtype="int64"),
            "activity_type": pd.Series([], dtype=object),
            "occurred_at": pd.Series([], dtype="datetime64[ns, UTC]"),
            "reason": pd.Series([], dtype=object),
        }
    )
    held = assignments().iloc[[1]].assign(assigned_at=pd.Timestamp("2026-02-23 12:00", tz="UTC"))
    context = RecycleContext(RULES, "v1", 70.0, 40.0, None, "c1")  # type: ignore[arg-type]
    result = recycle_batch(leads, RecycleInputs(acts, held, {}), context, NOW)
    assert result.changes["id"].tolist() == [1]
    assert result.changes["score"].tolist() == [40.0]
    assert result.changes["temperature"].tolist() == ["warm"]
    assert result.stats["reason:not_accepted"] == 1 and result.stats["looked_at"] == 2
    assert list(result.report) == [
        "following",
        "release",
        "stopped",
        "cooldown",
        "long_term",
        "entries",
        "now",
    ]
    assert result.report["release"]["released_reason"].tolist() == ["recycled: not_accepted"]
    assert result.report["following"]["to_status"].tolist() == ["nurturing"]
