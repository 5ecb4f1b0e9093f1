"""Ops, told: a killed lane leaves its task runs Running (task runs send no heartbeats): a lane worker
marks those Running for longer than any lane run takes as Crashed, and only those (issue
21). On the session's Prefect test server, with task runs in the states a SIGKILLed
``leadflow lane`` leaves behind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from prefect import task
from prefect.client.orchestration import get_client
from prefect.states import Running

from tasks.lane import speed_to_lead
from tasks.ops import crash_stale_lane_runs, stale_after


@task(name="not-the-lane")
def other_background_task() -> None:
    """A background task of another kind: not the lane's to judge."""


def _running(client, kind, name: str):
    return client.create_task_run(
        kind, flow_run_id=None, dynamic_key=uuid4().hex, name=name, state=Running()
    )


def test_a_killed_lanes_runs_are_crashed_and_nothing_else():
    with get_client(sync_client=True) as client:
        dead = _running(client, speed_to_lead, "lane-dead")
        other = _running(client, other_background_task, "other-running")
        later = datetime.now(UTC) + timedelta(minutes=20)  # as seen by a sweep 20 min on

        # A sweep now finds them young: a lane run may take seconds.
        assert crash_stale_lane_runs(client, timedelta(minutes=10)) == []
        assert client.read_task_run(dead.id).state.is_running()

        crashed = crash_stale_lane_runs(client, timedelta(minutes=10), now=later)
        assert crashed == ["lane-dead"]
        state = client.read_task_run(dead.id).state
        assert state.is_crashed() and "its lane worker was killed" in state.message
        assert client.read_task_run(other.id).state.is_running()
        # Swept again: nothing more to do.
        assert crash_stale_lane_runs(client, timedelta(minutes=10), now=later) == []


def test_the_stale_threshold_is_set_in_the_environment(monkeypatch):
    from leadflow.config import ConfigError

    monkeypatch.delenv("LEADFLOW_LANE_STALE_SECONDS", raising=False)
    assert stale_after() == timedelta(minutes=10)
    monkeypatch.setenv("LEADFLOW_LANE_STALE_SECONDS", "90")
    assert stale_after() == timedelta(seconds=90)
    monkeypatch.setenv("LEADFLOW_LANE_STALE_SECONDS", "soon")
    with pytest.raises(ConfigError, match="LEADFLOW_LANE_STALE_SECONDS='soon'"):
        stale_after()


def _events(name: str) -> list[dict]:
    with get_client(sync_client=True) as client:
        answer = client.request(
            "POST", "/events/filter", json={"filter": {"event": {"name": [name]}}, "limit": 50}
        )
    return answer.json().get("events", [])


def _until(check, timeout: float = 20.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.25)
    raise AssertionError("no such event reached the server")


def test_dead_letters_and_refusals_are_announced_with_counts_only():
    from leadflow.quality import GateResult
    from tasks.hops import announce_refusals
    from tasks.outbox import announce_dead_letters

    assert announce_dead_letters({"dead": 0, "backlog": {"dead": 4}}) is False
    report = {"dead": 2, "bounced": 1, "backlog": {"dead": 5}, "errors": ["ann@acme.com: 550"]}
    assert announce_dead_letters(report) is True
    refused = GateResult("enriched", "enriched", "enrich:abcd1234:3:ff00aa", False, 10, 2, 8, [])
    refused.checks = [{"name": "quarantine_rate_within_limit", "success": False}]
    passed = GateResult("enriched", "enriched", "enrich:abcd1234:4:ff00ab", True, 10, 10, 0, [])
    assert announce_refusals([refused, passed]) == 1

    dead = _until(lambda: _events("leadflow.outbox.dead-letters"))
    assert dead[0]["payload"] == {"dead": 2, "bounced": 1, "dead_total": 5}
    assert "@" not in str(dead[0])
    gate = _until(lambda: _events("leadflow.gate.refused"))[0]
    assert gate["resource"]["leadflow.hop"] == "enrich"
    assert gate["resource"]["leadflow.suite"] == "enriched"
    assert gate["payload"] == {
        "refused": 1,
        "batches": ["enrich:abcd1234:3:ff00aa"],
        "checks": ["quarantine_rate_within_limit"],
        "evaluated": 10,
        "quarantined": 8,
    }
