"""Nurture cadences on SQLite and PostgreSQL, with `now` moved forward: each step goes out
once however often ticks run, quiet hours, weekends and the frequency cap defer (never drop),
exits are checked before every send, suppressed leads are never contacted, a template error
waits for the fix, and editing a cadence keeps or re-plans. SMTP and concurrent ticks are
in e2e/test_nurture_e2e.py, the planner in unit/nurture/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from leadflow import lifecycle, store
from leadflow import tables as t

from helpers import CADENCES, MONDAY, nurturing, rules_dir, table, tick

pytestmark = pytest.mark.flow


def outbox_keys(database_url: str) -> list[str]:
    return sorted(table(database_url, "outbox")["idempotency_key"])


def test_each_step_goes_out_once_and_a_finished_cadence_moves_on(database_url, tmp_path):
    engine = store.get_engine(database_url)
    rules = rules_dir(tmp_path)
    warm = nurturing(engine, ["warm"] * 3)
    cold = nurturing(engine, ["cold"])
    first = tick(database_url, rules, MONDAY)
    assert (first["enrolled"], first["queued"]) == (4, 3)  # cold's first step waits a day
    again = tick(database_url, rules, MONDAY)  # a rerun at the same `now`
    assert (again["enrolled"], again["queued"]) == (0, 0)
    assert len(outbox_keys(database_url)) == 3
    tick(database_url, rules, MONDAY + timedelta(days=1))  # cold's guide; cold finishes
    tick(database_url, rules, MONDAY + timedelta(days=2))  # warm: proof
    last = tick(database_url, rules, MONDAY + timedelta(days=3))  # warm: the rep task
    assert last["queued"] == 3 and last["finished"] == 3 and last["enrolled"] == 3
    keys = outbox_keys(database_url)
    assert len(keys) == len(set(keys)) == 3 * 3 + 1
    assert {k for k in keys if k.endswith(":3")} == {f"touch:{i}:warm:1:3" for i in warm}
    tasks = table(database_url, "outbox").query("recipient == 'sdr@reps.example'")
    assert len(tasks) == 3 and tasks["subject"].str.startswith("Call lead").all()
    enrolments = table(database_url, "cadence_enrolments")
    later = enrolments[enrolments["cadence"] == "later"]
    assert sorted(later["lead_id"]) == warm and (later["status"] == "active").all()
    assert (enrolments.query("cadence == 'warm'")["end_reason"] == "finished").all()
    leads = table(database_url, "leads").set_index("id")
    assert leads.loc[cold[0], "status"] == "disqualified"  # cold's on_finish
    assert (leads.loc[warm, "status"] == "nurturing").all()
    notes = table(database_url, "lead_events").query("kind == 'nurture'")
    assert set(notes.loc[notes["lead_id"] == warm[0], "reason"]) == {
        "enrolled in warm",
        "finished warm: on to later",
    }
    touches = table(database_url, "cadence_touches")
    assert len(touches) == 10 and not touches.duplicated(["enrolment_id", "step"]).any()
    # Each touch names the run that sent it: the runner hands persist the flow run's id.
    assert touches["flow_run_id"].notna().all() and touches["flow_run_id"].nunique() == 4


def test_quiet_hours_weekends_and_the_cap_defer_and_never_drop(database_url, tmp_path):
    engine = store.get_engine(database_url)
    text = (
        CADENCES.replace("max_touches_per_week: 5", "max_touches_per_week: 2")
        .replace("{name: proof, delay: 2d", "{name: proof, delay: 1h")
        .replace("delay: 1d\n        channel: rep_task", "delay: 1h\n        channel: rep_task")
    )
    rules = rules_dir(tmp_path, text=text)
    nurturing(engine, ["warm"], timezone=["America/New_York"])
    # Friday 23:30 UTC is 18:30 in New York: allowed. An hour later it is quiet, then weekend.
    friday = datetime(2026, 11, 6, 23, 30, tzinfo=UTC)
    assert tick(database_url, rules, friday)["queued"] == 1
    quiet = tick(database_url, rules, friday + timedelta(hours=1, minutes=5))
    assert (quiet["queued"], quiet["deferred_quiet"]) == (0, 1)
    enrolment = table(database_url, "cadence_enrolments").iloc[0]
    monday_8am_new_york = datetime(2026, 11, 9, 13, 0, tzinfo=UTC)  # EST: UTC-5
    assert enrolment["due_at"] == monday_8am_new_york and enrolment["deferrals"] == 1
    saturday = tick(database_url, rules, datetime(2026, 11, 7, 15, tzinfo=UTC))
    assert saturday["queued"] == 0  # not due yet: nothing looked at twice
    monday = tick(database_url, rules, monday_8am_new_york)
    assert monday["queued"] == 1  # the second touch of the week
    capped = tick(database_url, rules, monday_8am_new_york + timedelta(hours=2))
    assert (capped["queued"], capped["deferred_cap"]) == (0, 1)  # the third waits
    due = table(database_url, "cadence_enrolments").iloc[0]["due_at"]
    assert due == friday + timedelta(days=7)  # when the oldest touch leaves the window
    later = tick(database_url, rules, due + timedelta(hours=14))  # Sat 13:30 UTC: weekend
    assert later["queued"] == 0
    done = tick(database_url, rules, datetime(2026, 11, 16, 14, tzinfo=UTC))
    assert done["queued"] == 1 and done["finished"] == 1
    touches = table(database_url, "cadence_touches")
    assert list(touches["step"]) == [1, 2, 3] and (touches["status"] == "queued").all()
    assert len(set(outbox_keys(database_url))) == 3


def test_exits_are_checked_before_every_send_and_suppressed_leads_are_never_contacted(
    database_url, tmp_path
):
    engine = store.get_engine(database_url)
    rules = rules_dir(tmp_path)
    replier, leaves, unsub, bounced, dne, listed, domain, fine = nurturing(
        engine,
        ["warm"] * 8,
        email=[
            "r@a.example",
            "l@a.example",
            "u@a.example",
            "b@a.example",
            "d@a.example",
            "ceo@listed.example",
            "anyone@rival.example",
            "f@a.example",
        ],
        attributes=[None, None, None, None, {"do_not_email": "yes"}, None, None, None],
    )
    first = tick(database_url, rules, MONDAY)
    assert first["queued"] == 5  # the do-not-email and listed leads are not even enrolled
    day = MONDAY + timedelta(hours=1)
    with engine.begin() as conn:
        for lead, kind in ((replier, "reply"), (unsub, "unsubscribe"), (bounced, "bounce")):
            conn.execute(
                t.engagement_events.insert().values(
                    lead_id=lead, event_type=kind, occurred_at=day, event_key=f"{kind}:{lead}"
                )
            )
        lifecycle.apply(
            conn,
            pd.DataFrame({"id": [leaves], "from_status": "nurturing", "to_status": "mql"}),
            actor="score",
            at=day,
        )
    second = tick(database_url, rules, MONDAY + timedelta(days=2))
    assert second["queued"] == 1 and second["left_nurture"] == 1
    assert (second["exited"], second["suppressed"]) == (1, 2)
    ends = table(database_url, "cadence_enrolments").set_index("lead_id")["end_reason"]
    assert ends[replier] == "replied" and ends[leaves] == "became_mql"
    assert ends[unsub] == "suppressed: unsubscribed" and ends[bounced] == "suppressed: bounced"
    sent_to = set(table(database_url, "outbox")["lead_id"])
    assert not sent_to & {dne, listed, domain}
    assert (touches := table(database_url, "cadence_touches"))[touches["lead_id"] == fine][
        "step"
    ].tolist() == [
        1,
        2,
    ]


def test_a_template_error_waits_for_the_fix_and_is_never_half_sent(database_url, tmp_path):
    engine = store.get_engine(database_url)
    rules = rules_dir(tmp_path)
    template = Path(rules).parent / "templates" / "hello.txt"
    template.write_text("Hello {{ first_name }}, we love {{ favourite_colour }}.\n")
    nurturing(engine, ["warm"] * 2)
    broken = tick(database_url, rules, MONDAY)
    assert (broken["queued"], broken["template_failed"]) == (0, 2)
    assert "favourite_colour" in broken["template_errors"][0]
    assert "hello.txt" in broken["template_errors"][0]
    assert table(database_url, "outbox").empty and table(database_url, "cadence_touches").empty
    errors = table(database_url, "cadence_enrolments")["last_error"]
    assert errors.str.contains("'favourite_colour' is undefined").all()
    template.write_text("Hello {{ first_name }}.\n")
    fixed = tick(database_url, rules, MONDAY + timedelta(minutes=15))
    assert fixed["queued"] == 2 and fixed["template_failed"] == 0
    assert table(database_url, "cadence_enrolments")["last_error"].isna().all()


@pytest.mark.parametrize("policy", ["keep", "replan"])
def test_editing_a_cadence_keeps_or_replans_planned_touches(sqlite_url, tmp_path, policy):
    engine = store.get_engine(sqlite_url)
    rules = rules_dir(tmp_path, on_change=policy)
    nurturing(engine, ["warm"])
    tick(sqlite_url, rules, MONDAY)
    before = table(sqlite_url, "cadence_enrolments").iloc[0]
    assert before["due_at"] == MONDAY + timedelta(days=2)
    edited = Path(rules).read_text().replace("{name: proof, delay: 2d", "{name: proof, delay: 5d")
    Path(rules).write_text(edited)
    result = tick(sqlite_url, rules, MONDAY + timedelta(hours=1))
    assert result["version_moved"] == 1
    after = table(sqlite_url, "cadence_enrolments").iloc[0]
    expected = MONDAY + timedelta(days=2 if policy == "keep" else 5)
    assert after["due_at"] == expected and after["step"] == 2
    assert len(table(sqlite_url, "cadence_touches")) == 1  # history kept either way


def test_removing_steps_ends_the_cadence_per_on_finish_and_keeps_history(sqlite_url, tmp_path):
    engine = store.get_engine(sqlite_url)
    rules = rules_dir(tmp_path)
    nurturing(engine, ["warm"])
    tick(sqlite_url, rules, MONDAY)
    text = Path(rules).read_text()
    start = text.index("      - {name: proof")
    Path(rules).write_text(text[:start] + text[text.index("    on_finish: {then: cadence") :])
    result = tick(sqlite_url, rules, MONDAY + timedelta(hours=1))
    assert result["finished"] == 1
    enrolments = table(sqlite_url, "cadence_enrolments")
    assert list(enrolments["cadence"]) == ["warm", "later"]
    assert enrolments.iloc[0]["end_reason"] == "finished"
    assert len(table(sqlite_url, "cadence_touches")) == 1
