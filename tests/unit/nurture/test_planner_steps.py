"""The nurture planner's decisions, DataFrames in and a ``Plan`` out, mostly on the examples of
its docstrings (``leadflow/nurture/plan.py``): the cadences of ``helpers.CADENCES`` (``warm``:
``hello`` at once, ``proof`` 2 days later, ``call-task`` for a rep 1 day later, then on to
``later``; ``cold``: one step, then disqualify), quiet hours 19:00-08:00 in the lead's zone,
no weekends, 5 touches a week; ``now`` is Monday 2 Nov 2026, 10:00 UTC. No database, no
Prefect."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from leadflow.nurture import plan as nurture
from leadflow.nurture.hop import nurture_batch, summarise

from helpers import CADENCES, MONDAY, rules_dir, write

pytestmark = pytest.mark.unit

DAY = timedelta(days=1)
SATURDAY = MONDAY - 2 * DAY  # 31 Oct 2026, 10:00 UTC


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> nurture.NurtureContext:
    return nurture.load_context(rules_dir(tmp_path_factory.mktemp("nurture")))


def leads(*people: dict[str, Any]) -> pd.DataFrame:
    """Nurturing leads 1, 2, ... in UTC, warm, with an address, unless a person says otherwise."""
    base = {
        "status": "nurturing",
        "first_name": "Lee",
        "company": "Co",
        "temperature": "warm",
        "timezone": "UTC",
        "attributes.do_not_email": None,
        "attributes": None,
    }
    rows = [
        base | {"id": i, "email": f"lead{i}@buyer.example"} | person
        for i, person in enumerate(people, start=1)
    ]
    return pd.DataFrame(rows)


def enrolment(lead_id: int, cadence: str = "warm", step: int = 1, **fields: Any) -> dict:
    """An active enrolment (entry 1, enrolled a week ago) due a minute before ``MONDAY``."""
    return {
        "id": 100 + lead_id,
        "lead_id": lead_id,
        "cadence": cadence,
        "version": "v0",
        "entry_no": 1,
        "step": step,
        "status": "active",
        "due_at": pd.Timestamp(MONDAY - timedelta(minutes=1)),
        "enrolled_at": pd.Timestamp(MONDAY - 7 * DAY),
        "last_touch_at": pd.NaT,
        "deferrals": 0,
        "last_error": None,
        "ended_at": pd.NaT,
        "end_reason": None,
    } | fields


def inputs(
    enrolments: list[dict] = (),
    signals: list[tuple[int, str, datetime]] = (),
    recent: list[tuple[int, datetime]] = (),
) -> nurture.NurtureInputs:
    frame = pd.DataFrame(list(enrolments), columns=list(nurture.ENROLMENT_COLUMNS))
    for column in ("due_at", "enrolled_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return nurture.NurtureInputs(
        enrolments=frame,
        recent=pd.DataFrame(
            [{"lead_id": i, "decided_at": pd.Timestamp(at)} for i, at in recent],
            columns=["lead_id", "decided_at"],
        ),
        signals=pd.DataFrame(
            [{"lead_id": i, "kind": kind, "last": pd.Timestamp(at)} for i, kind, at in signals],
            columns=["lead_id", "kind", "last"],
        ),
    )


def row(frame: pd.DataFrame, lead_id: int, **where: Any) -> dict[str, Any]:
    """The one row of ``frame`` for ``lead_id`` (and ``where``)."""
    hit = frame[frame["lead_id"] == lead_id]
    for name, value in where.items():
        hit = hit[hit[name] == value]
    assert len(hit) == 1, hit
    return hit.iloc[0].to_dict()


# --------------------------------------------------------------------------- enrolment


def test_warm_and_cold_leads_enrol_and_the_first_touch_goes_out_at_once(context) -> None:
    batch = leads({}, {"temperature": "cold"}, {"temperature": "hot"}, {"status": "mql"})
    plan = nurture.plan_batch(batch, inputs(), context, MONDAY)

    warm, cold = row(plan.enrolments, 1), row(plan.enrolments, 2)
    assert set(plan.enrolments["lead_id"]) == {1, 2}  # no cadence for hot; mql left nurture
    assert warm["new"] and warm["cadence"] == "warm" and warm["entry_no"] == 1
    assert warm["step"] == 2 and warm["due_at"] == MONDAY + 2 * DAY  # hello sent, proof next
    assert warm["last_touch_at"] == MONDAY
    assert cold["cadence"] == "cold" and cold["step"] == 1 and cold["due_at"] == MONDAY + DAY
    assert plan.messages["idempotency_key"].tolist() == ["touch:1:warm:1:1"]
    message = plan.messages.iloc[0]
    assert message["recipient"] == "lead1@buyer.example" and message["subject"] == "Hi Lee"
    assert "/unsubscribe?lead=1&t=" in message["body"]
    assert row(plan.touches, 1)["status"] == "queued"
    assert pd.isna(row(plan.touches, 1)["enrolment_id"])  # the store fills in the new id
    assert plan.notes.values.tolist() == [[1, "enrolled in warm"], [2, "enrolled in cold"]]
    assert plan.stats["enrolled"] == 2 and plan.stats["queued"] == 1
    assert plan.checked["id"].tolist() == [1, 2]


def test_plan_batch_docstring_example(context) -> None:
    batch = leads({}, {"timezone": "America/New_York"}, {}, {})
    state = inputs([enrolment(4)], [(3, "unsubscribe", SATURDAY), (4, "reply", MONDAY - DAY)])
    plan = nurture.plan_batch(batch, state, context, MONDAY)
    assert plan.messages["idempotency_key"].tolist() == ["touch:1:warm:1:1"]
    waiting = row(plan.enrolments, 2)
    assert waiting["new"] and waiting["step"] == 1
    assert waiting["due_at"] == datetime(2026, 11, 2, 13, tzinfo=UTC)
    assert 3 not in set(plan.enrolments["lead_id"])
    assert row(plan.enrolments, 4)["end_reason"] == "replied"
    assert plan.checked["id"].tolist() == [1, 2, 4]


def test_suppressed_leads_do_not_enrol(context) -> None:
    batch = leads(
        {},  # unsubscribed (an event)
        {"email": "anyone@rival.example"},  # a listed domain
        {"email": "ceo@listed.example"},  # a listed address
        {"attributes.do_not_email": "yes"},
    )
    plan = nurture.plan_batch(
        batch, inputs(signals=[(1, "unsubscribe", SATURDAY)]), context, MONDAY
    )
    assert plan.enrolments.empty and plan.messages.empty and plan.touches.empty
    assert plan.checked.empty


def test_do_not_email_as_each_database_reads_a_json_true(context) -> None:
    """PostgreSQL reads a JSON ``true`` as ``'true'``, SQLite as ``1``, and as ``1.0`` once a
    lead without the attribute makes the column float: each suppresses, 0 and "no" do not."""
    for column in ([1.0, None, 0.0, 2.0], [True, "no", None, "TRUE"], ["1", "0", None, "t"]):
        batch = leads(*({} for _ in column))
        batch["attributes.do_not_email"] = pd.Series(column, dtype=None)
        reasons = nurture.suppression(batch, inputs().signals, context)
        found = [r if isinstance(r, str) else None for r in reasons]
        assert found == ["do not email", None, None, "do not email"], column


def test_active_leads_are_not_enrolled_twice_and_never_means_never(context) -> None:
    ended = enrolment(2, status="exited", due_at=pd.NaT, ended_at=pd.Timestamp(MONDAY - 90 * DAY))
    due_tomorrow = enrolment(1, due_at=pd.Timestamp(MONDAY + DAY))
    plan = nurture.plan_batch(leads({}, {}), inputs([due_tomorrow, ended]), context, MONDAY)
    assert plan.enrolments.empty and plan.messages.empty  # 1 waits; 2 may not come back
    assert plan.checked.empty


# --------------------------------------------------------------------------- due touches


def test_due_touches_exit_suppress_defer_or_go_out(context) -> None:
    """``_Walk.decide``'s example: lead 1 replied since it enrolled, lead 2 unsubscribed,
    lead 3 is in New York (05:00 there), lead 4 has no address, lead 5 gets its touch."""
    batch = leads({}, {}, {"timezone": "America/New_York"}, {"email": None}, {})
    signals = [(1, "reply", MONDAY - DAY), (2, "unsubscribe", MONDAY - DAY)]
    state = inputs([enrolment(i) for i in range(1, 6)], signals)
    plan = nurture.plan_batch(batch, state, context, MONDAY)

    assert row(plan.enrolments, 1)["status"] == "exited"
    assert row(plan.enrolments, 1)["end_reason"] == "replied"
    assert row(plan.enrolments, 2)["end_reason"] == "suppressed: unsubscribed"
    assert row(plan.touches, 2)["status"] == "suppressed"
    assert row(plan.touches, 2)["reason"] == "unsubscribed"
    assert row(plan.enrolments, 4)["end_reason"] == "suppressed: no email address"
    deferred = row(plan.enrolments, 3)
    assert deferred["status"] == "active" and deferred["deferrals"] == 1
    assert deferred["due_at"] == datetime(2026, 11, 2, 13, tzinfo=UTC)  # 08:00 in New York
    assert plan.messages["idempotency_key"].tolist() == ["touch:5:warm:1:1"]
    assert row(plan.enrolments, 5)["step"] == 2
    assert row(plan.enrolments, 5)["due_at"] == MONDAY + 2 * DAY
    assert set(plan.touches["lead_id"]) == {2, 4, 5}  # a touch row for every contact decision
    assert {k: plan.stats[k] for k in ("exited", "suppressed", "deferred_quiet", "queued")} == {
        "exited": 1,
        "suppressed": 2,
        "deferred_quiet": 1,
        "queued": 1,
    }
    assert [1, "left warm: replied"] in plan.notes.values.tolist()
    assert plan.checked["id"].tolist() == [1, 2, 3, 4, 5]
    assert not plan.checked["contacted_while_suppressed"].any()
    assert not plan.checked["queued_in_quiet_hours"].any()


def test_engagement_before_the_enrolment_does_not_end_it(context) -> None:
    signals = [(1, "reply", MONDAY - 30 * DAY), (2, "meeting", MONDAY - DAY)]
    plan = nurture.plan_batch(
        leads({}, {}), inputs([enrolment(1), enrolment(2)], signals), context, MONDAY
    )
    assert plan.messages["lead_id"].tolist() == [1]  # the reply came before it enrolled
    assert row(plan.enrolments, 2)["end_reason"] == "meeting_booked"  # an activity counts


def test_touches_wait_for_the_window_in_the_leads_zone_and_for_monday(context) -> None:
    batch = leads({"timezone": "Asia/Tokyo"}, {}, {"timezone": "Not/AZone"})  # bad zone: UTC
    state = inputs([enrolment(i, due_at=pd.Timestamp(SATURDAY)) for i in (1, 2, 3)])
    at_saturday = nurture.plan_batch(batch, state, context, SATURDAY + timedelta(minutes=1))
    assert at_saturday.messages.empty and at_saturday.stats["deferred_quiet"] == 3
    monday_8am = {1: datetime(2026, 11, 1, 23, tzinfo=UTC), 2: datetime(2026, 11, 2, 8, tzinfo=UTC)}
    monday_8am[3] = monday_8am[2]
    assert at_saturday.enrolments.set_index("lead_id")["due_at"].to_dict() == monday_8am

    at_monday = nurture.plan_batch(batch, state, context, MONDAY)  # 19:00 in Tokyo
    assert row(at_monday.enrolments, 1)["due_at"] == datetime(2026, 11, 2, 23, tzinfo=UTC)
    assert at_monday.messages["lead_id"].tolist() == [2, 3]


def test_the_weekly_cap_defers_a_touch_to_a_week_after_the_oldest(context) -> None:
    wednesday = MONDAY - 5 * DAY - timedelta(hours=1)  # last Wednesday 09:00
    five = [(1, wednesday + timedelta(hours=h)) for h in range(5)]
    four_and_old = [(2, wednesday + timedelta(hours=h)) for h in range(4)] + [(2, MONDAY - 8 * DAY)]
    state = inputs([enrolment(1), enrolment(2)], recent=five + four_and_old)
    plan = nurture.plan_batch(leads({}, {}), state, context, MONDAY)

    capped = row(plan.enrolments, 1)
    assert capped["due_at"] == wednesday + 7 * DAY and capped["deferrals"] == 1
    assert plan.messages["lead_id"].tolist() == [2]  # 4 this week: the fifth goes out
    assert plan.stats["deferred_cap"] == 1
    assert plan.checked.set_index("id")["touches_in_week"].to_dict() == {1: 5, 2: 5}
    assert plan.checked["within_cap"].all()


def test_the_cap_counts_the_touches_queued_in_the_same_tick(context) -> None:
    """Two cadences due for one lead with 4 touches this week: one goes out, one waits."""
    recent = [(1, MONDAY - timedelta(hours=h)) for h in range(1, 5)]
    state = inputs([enrolment(1, "cold"), enrolment(1, "later") | {"id": 201}], recent=recent)
    plan = nurture.plan_batch(leads({"temperature": "hot"}), state, context, MONDAY)
    assert plan.messages["idempotency_key"].tolist() == ["touch:1:cold:1:1"]  # cold sorts first
    assert (
        row(plan.enrolments, 1, cadence="later")["due_at"]
        == MONDAY - 4 * timedelta(hours=1) + 7 * DAY
    )
    assert plan.stats["deferred_cap"] == 1


# --------------------------------------------------------------------------- the end of a cadence


def test_the_last_warm_step_goes_to_the_rep_and_moves_the_lead_on_to_later(context) -> None:
    plan = nurture.plan_batch(leads({}), inputs([enrolment(1, step=3)]), context, MONDAY)

    message = plan.messages.iloc[0]
    assert message["idempotency_key"] == "touch:1:warm:1:3"
    assert message["recipient"] == "sdr@reps.example" and message["payload"]["audience"] == "rep"
    done = row(plan.enrolments, 1, cadence="warm")
    assert (done["status"], done["end_reason"], done["ended_at"]) == (
        "completed",
        "finished",
        MONDAY,
    )
    later = row(plan.enrolments, 1, cadence="later")
    assert later["new"] and later["entry_no"] == 1 and later["due_at"] == MONDAY + 30 * DAY
    assert plan.finished == [(1, "warm")] and plan.disqualify == []
    assert plan.stats["enrolled"] == 1 and plan.stats["enrolled_next"] == 1
    assert [1, "finished warm: on to later"] in plan.notes.values.tolist()


def test_finishing_cold_disqualifies_and_the_hop_moves_the_lead(context) -> None:
    state = inputs([enrolment(1, "cold"), enrolment(2, "cold", step=2)])  # 2: steps ran out
    batch = leads({"temperature": "cold"}, {"temperature": "cold"})
    plan = nurture.plan_batch(batch, state, context, MONDAY)
    assert plan.disqualify == [1, 2]
    assert plan.messages["lead_id"].tolist() == [1]  # 2 finishes without a touch
    assert plan.stats["finished"] == 2

    result = nurture_batch(batch, state, context, MONDAY)
    assert result.changes[["id", "to_status"]].values.tolist() == [
        [1, "disqualified"],
        [2, "disqualified"],
    ]
    assert result.report["now"] == MONDAY


def test_an_enrolment_in_a_removed_cadence_exits(context) -> None:
    batch = leads({"temperature": "hot"})  # in no cadence's entry: nothing new
    plan = nurture.plan_batch(batch, inputs([enrolment(1, "retired")]), context, MONDAY)
    assert row(plan.enrolments, 1)["end_reason"] == "cadence retired removed from the rules"
    assert plan.notes.values.tolist() == [[1, "left retired: cadence removed"]]
    assert plan.messages.empty


def test_a_template_error_leaves_the_touch_due_with_the_error(tmp_path) -> None:
    path = rules_dir(tmp_path, text=CADENCES.replace("template: proof.txt", "template: plan.txt"))
    write(tmp_path / "rules" / "templates" / "plan.txt", "Your plan: {{ attributes.plan }}\n")
    context = nurture.load_context(path)
    batch = leads({}, {"attributes": '{"plan": "gold"}'})
    plan = nurture.plan_batch(
        batch, inputs([enrolment(1, step=2), enrolment(2, step=2)]), context, MONDAY
    )

    waiting = row(plan.enrolments, 1)
    assert waiting["status"] == "active" and waiting["step"] == 2
    assert waiting["due_at"] == MONDAY - timedelta(minutes=1)  # due again next tick
    assert waiting["last_error"].startswith("warm step 2 (proof): template plan.txt: ")
    assert plan.errors == [waiting["last_error"]] and plan.stats["template_failed"] == 1
    assert plan.messages["lead_id"].tolist() == [2]
    assert "Your plan: gold" in plan.messages.iloc[0]["body"]


# --------------------------------------------------------------------------- named steps


def test_exit_reason_is_the_first_exit_signalled_since_the_enrolment(context) -> None:
    warm = context.rules.cadence("warm")
    enrolled = pd.Timestamp(datetime(2026, 11, 2, 9, tzinfo=UTC))
    after, before = enrolled + timedelta(minutes=30), enrolled - 7 * DAY
    assert nurture.exit_reason(warm, 1, enrolled, {(1, "reply"): after}) == "replied"
    assert nurture.exit_reason(warm, 1, enrolled, {(1, "reply"): before}) is None
    assert nurture.exit_reason(warm, 1, enrolled, {(1, "meeting"): after}) == "meeting_booked"
    assert nurture.exit_reason(warm, 1, enrolled, {(1, "unsubscribe"): after}) is None
    assert nurture.exit_reason(warm, 2, enrolled, {(1, "reply"): after}) is None


def test_next_window_skips_quiet_hours_and_weekends_in_local_time(context) -> None:
    rules = context.rules
    assert nurture.next_window(MONDAY, "UTC", rules) == MONDAY
    assert nurture.next_window(MONDAY, "America/New_York", rules) == datetime(
        2026, 11, 2, 13, tzinfo=UTC
    )
    assert nurture.next_window(MONDAY, "Asia/Tokyo", rules) == datetime(2026, 11, 2, 23, tzinfo=UTC)
    friday_night = datetime(2026, 10, 30, 20, tzinfo=UTC)
    assert nurture.next_window(friday_night, "UTC", rules) == datetime(2026, 11, 2, 8, tzinfo=UTC)


def test_departed_reason_names_where_the_lead_went() -> None:
    assert nurture.departed_reason("mql") == "became_mql"
    assert nurture.departed_reason("won") == "became_mql"
    assert nurture.departed_reason("disqualified") == "disqualified"
    assert nurture.departed_reason("recycled") == "left nurture: recycled"


@pytest.mark.parametrize(
    ("on_change", "expected", "replanned"),
    [
        ("replan", [datetime(2026, 11, 2, 9, tzinfo=UTC), MONDAY, MONDAY], 1),
        ("keep", [datetime(2026, 11, 1, 9, tzinfo=UTC), MONDAY, MONDAY - 5 * DAY], 0),
    ],
)
def test_moved_due_keeps_or_replans_and_brings_removed_cadences_forward(
    tmp_path, on_change, expected, replanned
) -> None:
    """``moved_due``'s example: ``warm``'s step 2 is now 3 days after step 1 (was 2)."""
    text = CADENCES.replace("delay: 2d", "delay: 3d")
    rules = nurture.load_context(rules_dir(tmp_path, on_change, text)).rules
    friday = datetime(2026, 10, 30, 9, tzinfo=UTC)
    stale = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "cadence": ["warm", "retired", "warm"],
            "step": [2, 1, 4],  # step 4: past warm's last, due long ago
            "due_at": [friday + 2 * DAY, MONDAY + 7 * DAY, MONDAY - 5 * DAY],
            "enrolled_at": [friday - DAY, friday, friday - 9 * DAY],
            "last_touch_at": [friday, None, None],
        }
    )
    due, count = nurture.moved_due(stale, rules, MONDAY)
    assert due.tolist() == expected and count == replanned


def test_summarise_adds_the_hops_counters_and_the_ticks() -> None:
    run = SimpleNamespace(
        stats={"enrolled": 3, "queued": 2, "deferred_quiet": 1, "deferred_cap": 2},
        moved={"disqualified": 1},
        quarantined=0,
        batches=1,
    )
    summary = summarise(run, {"left_nurture": 4}, None)
    assert summary["deferred"] == 3 and summary["disqualified"] == 1
    assert summary["left_nurture"] == 4 and summary["suppressed"] == 0
    assert summary["notifications"] == {}


def test_the_suppression_context_is_read_again_only_when_its_files_change(
    tmp_path, monkeypatch
) -> None:
    import os
    import shutil

    from helpers import ROOT

    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", folder)
    monkeypatch.setenv("LEADFLOW_RULES_DIR", str(folder))
    monkeypatch.setenv("LEADFLOW_UNSUBSCRIBE_SECRET", "suppression-test-secret")
    first = nurture.suppression_context()
    assert nurture.suppression_context() is first  # unchanged files: no second read
    listed = folder / "lists" / "suppression.txt"
    listed.write_text("late@added.example\n")
    os.utime(listed, (1, 1))  # a different mtime, however fast the write
    second = nurture.suppression_context()
    assert second is not first and "late@added.example" in second.emails
    cadences = folder / "cadences.yaml"
    os.utime(cadences, (2, 2))
    assert nurture.suppression_context() is not second
