"""Nurture cadences on SQLite and PostgreSQL, with `now` moved forward: each step goes out
once however often ticks run, quiet hours, weekends and the frequency cap defer (never drop),
exits are checked before every send, suppressed leads are never contacted, a template error
waits for the fix, SMTP down loses nothing, and editing a cadence keeps or re-plans."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import requests
from sqlalchemy import func, select
from test_notify import Inbox, free_port

from blocks.notifier import SmtpNotifier
from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.cadence_rules import load_rules
from leadflow.config import ConfigError
from tasks import notify

from conftest import write
from helpers import table

pytestmark = pytest.mark.flow
ROOT = Path(__file__).resolve().parents[1]
MONDAY = datetime(2026, 11, 2, 10, tzinfo=UTC)  # 10:00 UTC, Monday

CADENCES = """
name: test-nurture
default_timezone: UTC
quiet_hours: {start: "19:00", end: "08:00"}
weekends: false
max_touches_per_week: 5
suppression_list: suppression.txt
on_change: ON_CHANGE
cadences:
  - name: warm
    entry: {field: temperature, equals: warm}
    reentry: never
    steps:
      - {name: hello, delay: 0d, subject: "Hi {{ first_name or 'there' }}", template: hello.txt}
      - {name: proof, delay: 2d, subject: "Proof for {{ company }}", template: proof.txt}
      - name: call-task
        delay: 1d
        channel: rep_task
        subject: "Call lead {{ lead_id }}"
        assignee: sdr@reps.example
        template: task.txt
    on_finish: {then: cadence, cadence: later}
  - name: cold
    entry: {field: temperature, equals: cold}
    steps:
      - {name: guide, delay: 1d, subject: Guide, template: hello.txt}
    on_finish: {then: disqualify}
  - name: later
    steps:
      - {name: monthly, delay: 30d, subject: Monthly, template: hello.txt}
    on_finish: {then: disqualify}
"""


def rules_dir(tmp_path: Path, on_change: str = "keep", text: str = CADENCES) -> str:
    folder = tmp_path / "rules"
    write(
        folder / "templates" / "hello.txt",
        "Hello {{ first_name }}.\nUnsubscribe: {{ unsubscribe_url }}\n",
    )
    write(folder / "templates" / "proof.txt", "Proof for {{ company }}.\n")
    write(folder / "templates" / "task.txt", "Call {{ first_name }} at {{ company }}.\n")
    write(folder / "suppression.txt", "# sales' list\n@rival.example\nceo@listed.example\n")
    return str(write(folder / "cadences.yaml", text.replace("ON_CHANGE", on_change)))


def nurturing(engine, temperatures: list[str], **columns) -> list[int]:
    """Leads that reached ``nurturing`` through the lifecycle (captured -> enriched ->
    nurturing), with ``columns`` set on them (lists, one value per lead)."""
    with engine.begin() as conn:
        ids = store.allocate_ids(conn, t.leads, len(temperatures))
        rows = pd.DataFrame(
            {
                "id": ids,
                "email": [f"lead{i}@buyer{i}.example" for i in ids],
                "first_name": "Lee",
                "company": [f"Buyer {i}" for i in ids],
                "country": "US",
                "captured_at": pd.Timestamp(MONDAY),
                "last_seen_at": pd.Timestamp(MONDAY),
                "updated_at": pd.Timestamp(MONDAY),
            }
        )
        for name, values in columns.items():
            if name in rows.columns:
                rows[name] = values
        lifecycle.admit(conn, rows, actor="test", at=MONDAY)
        for source, target in (("captured", "enriched"), ("enriched", "nurturing")):
            changes = pd.DataFrame({"id": ids, "from_status": source, "to_status": target})
            if target == "nurturing":
                changes["temperature"] = temperatures
                changes["score"] = 40.0
                for name, values in columns.items():
                    if name not in rows.columns:
                        changes[name] = values
            lifecycle.apply(conn, changes, actor="test", at=MONDAY)
    return [int(i) for i in ids]


def tick(database_url: str, rules: str, now: datetime, **kwargs) -> dict:
    from flows.nurture import nurture

    state = nurture(now=now, database_url=database_url, rules=rules, return_state=True, **kwargs)
    data = state.result(raise_on_failure=False)
    assert state.is_completed(), state.message
    return data


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


def test_smtp_down_loses_nothing_a_refused_address_bounces_alone_and_unsubscribe_works(
    database_url, tmp_path, monkeypatch
):
    from aiosmtpd.controller import Controller

    # A real public URL is long: the header must still go out as <URL>, never RFC 2047 words.
    public = "https://leads.marketing-operations.example-company.example/lifecycle/v1"
    monkeypatch.setenv("LEADFLOW_PUBLIC_URL", public)
    engine = store.get_engine(database_url)
    rules = rules_dir(tmp_path)
    good, refused, other = nurturing(
        engine,
        ["warm"] * 3,
        email=["good@a.example", "nobody@a.example", "other@a.example"],
    )
    assert tick(database_url, rules, MONDAY)["queued"] == 3
    port = free_port()
    notifier = SmtpNotifier(
        host="127.0.0.1", port=port, from_address="hi@example.com", starttls=False
    )
    down = notify.send_due(engine, [notifier], 100, MONDAY)
    assert (down.sent, down.deferred) == (0, 3)  # nothing there: all put back, none lost
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        up = notify.send_due(engine, [notifier], 100, MONDAY + timedelta(minutes=2))
        assert (up.sent, up.dead) == (2, 1)
        again = notify.send_due(engine, [notifier], 100, MONDAY + timedelta(hours=1))
        assert again.claimed == 0
    finally:
        controller.stop()
    assert sorted(m["To"] for m in inbox.messages) == ["good@a.example", "other@a.example"]
    message = next(m for m in inbox.messages if m["To"] == "good@a.example")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    header = " ".join(message["List-Unsubscribe"].split())  # unfolded, RFC 5322
    assert "=?" not in header and header.startswith(f"<{public}/unsubscribe?")
    url = re.fullmatch(r"<([^>]+)>", header).group(1)
    assert f"lead={good}" in url
    # The refused address came back as a bounce: the lead is suppressed from now on.
    events = table(database_url, "engagement_events")
    assert events.query("event_type == 'bounce'")["lead_id"].tolist() == [refused]
    # The header's link works: a one-click POST to a real `leadflow serve` on loopback.
    import uvicorn

    from app.web import create_app

    web_port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(database_url), host="127.0.0.1", port=web_port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        local = url.replace(public, f"http://127.0.0.1:{web_port}")
        assert (
            requests.get(local.replace(f"lead={good}", f"lead={other}"), timeout=5).status_code
            == 403
        )
        assert "Unsubscribe" in requests.get(local, timeout=5).text
        posted = requests.post(local, data={"List-Unsubscribe": "One-Click"}, timeout=5)
        assert posted.status_code == 200
        assert requests.post(local, timeout=5).status_code == 200  # twice: still one event
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    events = table(database_url, "engagement_events")
    assert events.query("event_type == 'unsubscribe'")["lead_id"].tolist() == [good]
    later = tick(database_url, rules, MONDAY + timedelta(days=2))
    assert (later["queued"], later["suppressed"]) == (1, 2)
    touches = table(database_url, "cadence_touches").query("step == 2").set_index("lead_id")
    assert touches["status"].to_dict() == {
        good: "suppressed",
        refused: "suppressed",
        other: "queued",
    }
    assert touches.loc[refused, "reason"] == "bounced"


@pytest.mark.postgres
def test_two_ticks_at_once_never_queue_a_step_twice(database_url, tmp_path):
    if not database_url.startswith("postgresql"):
        pytest.skip("two writers at once: PostgreSQL")
    engine = store.get_engine(database_url)
    rules = rules_dir(tmp_path)
    nurturing(engine, ["warm"] * 3000)
    env = dict(
        os.environ,
        LEADFLOW_DATABASE_URL=database_url,
        LEADFLOW_BATCH_SIZE="500",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    command = [sys.executable, "-m", "app.cli", "nurture", "--rules", rules, "--json"]
    command += ["--now", MONDAY.isoformat()]
    runs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [o[1][-2000:] for o in outputs]
    import json

    queued = [json.loads(out)["queued"] for out, _ in outputs]
    assert sum(queued) == 3000, queued
    with engine.connect() as conn:
        keys = conn.execute(select(func.count(func.distinct(t.outbox.c.idempotency_key)))).scalar()
        total = conn.execute(select(func.count()).select_from(t.outbox)).scalar()
        active = conn.execute(
            select(func.count())
            .select_from(t.cadence_enrolments)
            .where(t.cadence_enrolments.c.status == "active")
        ).scalar()
    assert keys == total == 3000 and active == 3000


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

    from tasks import nurture

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
    from tasks import nurture

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
