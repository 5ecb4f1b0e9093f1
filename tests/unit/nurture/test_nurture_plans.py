"""Nurture, the pure part: cadence rules errors name the file, the cadence and the step; the
planner never contacts a suppressed lead, past the cap or in quiet hours; re-entry restarts,
resumes or never."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from leadflow.config import ConfigError
from leadflow.nurture.rules import load_rules

from helpers import CADENCES, MONDAY, rules_dir, write


@pytest.mark.unit
def test_cadence_rules_errors_name_the_file_the_cadence_and_the_step(tmp_path):
    good = rules_dir(tmp_path)
    load_rules(good)
    cases = {
        "template: proof.txt": (
            "template: prooof.txt",
            "cadence warm: step 2 (proof): template prooof.txt not found",
        ),
        "channel: rep_task": ("channel: sms", "cadence warm: step 3 (call-task): channel"),
        "cadence: later}": ("cadence: latter}", "on_finish names unknown cadence 'latter'"),
        "reentry: never": ("reentry: sometimes", "reentry"),
        "delay: 2d": ("delay: 2 days", "write business time as 15m, 4h or 2d"),
    }
    text = Path(good).read_text()
    for old, (new, expected) in cases.items():
        path = write(tmp_path / "rules" / "cadences.yaml", text.replace(old, new, 1))
        with pytest.raises(ConfigError) as raised:
            load_rules(path)
        message = str(raised.value)
        assert "cadences.yaml" in message and expected in message, message
    write(tmp_path / "rules" / "cadences.yaml", text)
    Path(good).parent.joinpath("templates", "proof.txt").write_text("{% if company %}unclosed\n")
    with pytest.raises(ConfigError, match=r"cadence warm: step 2 \(proof\): template proof.txt"):
        load_rules(good)


@pytest.mark.unit
def test_suppressed_leads_are_never_contacted_whatever_the_leads_and_events(tmp_path):
    """Property: over random leads, engagement and enrolment states, the planner never queues
    a touch for a suppressed lead, never past the cap, never in quiet hours."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from leadflow.nurture import plan as nurture

    context = nurture.load_context(rules_dir(tmp_path))
    zones = ["UTC", "America/New_York", "Asia/Tokyo", "Europe/Berlin", None, "Not/AZone"]
    kinds = ["reply", "unsubscribe", "bounce", "meeting_booked", "meeting"]
    lead = st.fixed_dictionaries(
        {
            "email": st.sampled_from(
                ["a@x.example", "ceo@listed.example", "z@rival.example", "b@y.example", None]
            ),
            "temperature": st.sampled_from(["warm", "cold", "hot"]),
            "timezone": st.sampled_from(zones),
            "attributes.do_not_email": st.sampled_from([None, "yes", "no", "true"]),
            "events": st.lists(st.sampled_from(kinds), max_size=3),
            "enrolled_step": st.sampled_from([None, 1, 2, 3, 4]),
            "touches_this_week": st.integers(0, 6),
        }
    )

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(lead, min_size=1, max_size=12), st.integers(0, 24 * 7 - 1))
    def check(people, hour):
        now = MONDAY + timedelta(hours=hour)
        leads = pd.DataFrame(
            {
                "id": range(1, len(people) + 1),
                "status": "nurturing",
                "email": [p["email"] for p in people],
                "first_name": "Lee",
                "company": "Co",
                "temperature": [p["temperature"] for p in people],
                "timezone": [p["timezone"] for p in people],
                "attributes.do_not_email": [p["attributes.do_not_email"] for p in people],
                "attributes": None,
            }
        )
        enrolments = pd.DataFrame(
            [
                {
                    "id": i,
                    "lead_id": i,
                    "cadence": "warm",
                    "version": "old",
                    "entry_no": 1,
                    "step": p["enrolled_step"],
                    "status": "active",
                    "due_at": pd.Timestamp(now - timedelta(minutes=1)),
                    "enrolled_at": pd.Timestamp(MONDAY - timedelta(days=30)),
                    "last_touch_at": pd.NaT,
                    "deferrals": 0,
                    "last_error": None,
                    "ended_at": pd.NaT,
                    "end_reason": None,
                }
                for i, p in enumerate(people, start=1)
                if p["enrolled_step"] is not None
            ],
            columns=list(nurture.ENROLMENT_COLUMNS),
        )
        signals = pd.DataFrame(
            [
                {"lead_id": i, "kind": kind, "last": pd.Timestamp(MONDAY - timedelta(days=40))}
                for i, p in enumerate(people, start=1)
                for kind in set(p["events"])
            ],
            columns=["lead_id", "kind", "last"],
        )
        recent = pd.DataFrame(
            [
                {"lead_id": i, "decided_at": pd.Timestamp(now - timedelta(hours=k + 1))}
                for i, p in enumerate(people, start=1)
                for k in range(p["touches_this_week"])
            ],
            columns=["lead_id", "decided_at"],
        )
        inputs = nurture.NurtureInputs(enrolments=enrolments, recent=recent, signals=signals)
        plan = nurture.plan_batch(leads, inputs, context, now)
        contacted = set(plan.messages["lead_id"]) - {None}
        for i, p in enumerate(people, start=1):
            domain = (p["email"] or "").partition("@")[2]
            never = (
                {"unsubscribe", "bounce"} & set(p["events"])
                or p["attributes.do_not_email"] in ("yes", "true")
                or p["email"] == "ceo@listed.example"
                or domain == "rival.example"
            )
            if never:
                assert i not in contacted, (p, plan.messages)
        to_leads = [
            m for m in plan.messages.to_dict("records") if m["payload"]["audience"] == "lead"
        ]
        assert all(isinstance(m["recipient"], str) and "@" in m["recipient"] for m in to_leads)
        per_lead = plan.messages.groupby("lead_id").size()
        for i, sent in per_lead.items():
            assert people[i - 1]["touches_this_week"] + sent <= 5
        quiet = nurture.quiet_now(
            nurture.lead_zones(leads, context.rules).set_axis(leads["id"]), now, context.rules
        )
        assert not any(quiet[i] for i in contacted)
        assert plan.checked["id"].is_unique

    check()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("reentry", "days_since", "expected"),
    [("never", 40, None), ("restart", 40, 1), ("resume", 40, 2), ("restart", 5, None)],
)
def test_reentry_restarts_resumes_or_never_and_keeps_history(
    tmp_path, reentry, days_since, expected
):
    from leadflow.nurture import plan as nurture

    text = CADENCES.replace("reentry: never", f"reentry: {reentry}\n    reentry_after: 30d")
    context = nurture.load_context(rules_dir(tmp_path, text=text))
    leads = pd.DataFrame(
        {"id": [1], "status": "nurturing", "email": "a@x.example", "temperature": "warm",
         "first_name": "Lee", "company": "Co",
         "timezone": "UTC", "attributes": None}
    )  # fmt: skip
    ended = MONDAY - timedelta(days=days_since)
    history = pd.DataFrame(
        [{"id": 7, "lead_id": 1, "cadence": "warm", "version": "old", "entry_no": 1, "step": 2,
          "status": "exited", "due_at": pd.NaT, "enrolled_at": pd.Timestamp(ended - timedelta(days=3)),
          "last_touch_at": pd.Timestamp(ended), "deferrals": 0, "last_error": None,
          "ended_at": pd.Timestamp(ended), "end_reason": "replied"}],
        columns=list(nurture.ENROLMENT_COLUMNS),
    )  # fmt: skip
    inputs = nurture.NurtureInputs(
        enrolments=history,
        recent=pd.DataFrame(columns=["lead_id", "decided_at"]),
        signals=pd.DataFrame(columns=["lead_id", "kind", "last"]),
    )
    plan = nurture.plan_batch(leads, inputs, context, MONDAY)
    new = plan.enrolments[plan.enrolments["new"].astype(bool)]
    if expected is None:
        assert new.empty and plan.messages.empty
        return
    assert new["entry_no"].tolist() == [2]  # a new row: the first enrolment is kept as it was
    if expected == 1:  # restart: step 1 (no delay) goes out at once
        assert plan.messages["idempotency_key"].tolist() == ["touch:1:warm:2:1"]
    else:  # resume: from the step it stopped at, after that step's delay
        assert plan.messages.empty
        assert new["step"].tolist() == [2]
        assert new["due_at"].tolist() == [MONDAY + timedelta(days=2)]
