"""leadflow's automation definitions (app/automations.py), without a server: schedule periods,
the heartbeat window, templates Prefect's server accepts, and change detection that ignores
the order a trigger's sets come back in. The automations at work: tests/e2e/test_automations.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from uuid import uuid4

import pytest
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

from app import automations

MONDAY = datetime(2026, 11, 23, 9, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "period"),
    [
        (IntervalSchedule(interval=timedelta(seconds=300)), timedelta(minutes=5)),
        (CronSchedule(cron="*/15 * * * *"), timedelta(minutes=15)),
        (CronSchedule(cron="5 * * * *"), timedelta(hours=1)),
        (CronSchedule(cron="0 5 * * *"), timedelta(days=1)),
        # Weekdays only: the widest gap (Friday to Monday) is the one to wait out.
        (CronSchedule(cron="0 9 * * 1-5"), timedelta(days=3)),
        (RRuleSchedule(rrule="FREQ=HOURLY;INTERVAL=2"), timedelta(hours=2)),
    ],
)
def test_a_schedules_period_is_its_widest_gap(schedule, period):
    assert automations.schedule_period(schedule, now=MONDAY) == period


def test_the_heartbeat_window_and_its_action():
    automation = automations.heartbeats(30, 3)
    trigger = automation.trigger
    assert trigger.within == timedelta(seconds=90)
    assert trigger.posture == "Proactive" and trigger.for_each == {"prefect.resource.id"}
    # A run killed before its first heartbeat is caught too: Running starts the window.
    assert "prefect.flow-run.Running" in trigger.after
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed*"} <= trigger.expect
    assert automation.actions[0].type == "change-flow-run-state"
    assert automation.actions[0].state.value == "CRASHED"
    assert "no heartbeat for 90 s" in automation.actions[0].message


def test_every_message_template_is_one_the_server_accepts():
    from prefect.server.events.actions import SendNotification

    block = uuid4()
    deployment = SimpleNamespace(id=uuid4(), name="route", work_pool_name="leadflow")
    made = [
        *automations.notifying(block, {"route", "capture"}),
        automations.stale_schedule(
            deployment, "route", timedelta(minutes=5), block, "http://prefect:4200"
        ),
    ]
    for automation in made:
        for action in automation.actions:
            SendNotification.model_validate(action.model_dump(mode="json"))  # raises if bad
    stale = made[-1].actions[0]
    assert stale.subject == "leadflow: no completed route run in 10 minutes"
    assert f"http://prefect:4200/deployments/deployment/{deployment.id}" in stale.body
    assert made[-1].trigger.within == timedelta(minutes=10)


def test_a_bad_template_is_refused_by_the_server_model():
    from prefect.server.events.actions import SendNotification
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SendNotification(block_document_id=uuid4(), subject="{{ unclosed", body="x")


def test_failures_are_told_for_leadflow_deployments_only():
    failed = automations.notifying(uuid4(), {"route", "capture"})[0]
    related = failed.trigger.match_related
    assert [dict(r.items()) for r in related] == [
        {"prefect.resource.role": ["flow"], "prefect.resource.name": ["capture", "route"]},
        {"prefect.resource.role": ["deployment"]},
    ]
    assert failed.trigger.expect == {
        "prefect.flow-run.Failed",
        "prefect.flow-run.TimedOut",
        "prefect.flow-run.Crashed",
    }


def test_the_same_automation_compares_equal_whatever_its_sets_order():
    from prefect.events.schemas.automations import Automation

    one = automations.heartbeats(30)
    dumped = one.model_dump(mode="json")
    dumped["trigger"]["expect"] = sorted(dumped["trigger"]["expect"], reverse=True)
    again = Automation.model_validate({**dumped, "id": str(uuid4())})
    assert automations._comparable(again) == automations._comparable(one)
    assert automations._comparable(automations.heartbeats(60)) != automations._comparable(one)


def test_the_flows_are_leadflows():
    assert {"pipeline", "capture", "route", "sla", "nurture", "report"} <= automations.flow_names()
