"""Nurture with real processes and servers: SMTP down loses nothing, a refused address
bounces alone and the unsubscribe link works against the app served on loopback; two
``leadflow nurture`` processes at once never queue a step twice (PostgreSQL). The cadences
themselves are in flows/test_nurture.py, the planner in unit/nurture/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select

from blocks.notifier import SmtpNotifier
from leadflow import store
from leadflow import tables as t
from tasks import outbox as outbox_tasks

from helpers import MONDAY, Inbox, free_port, nurturing, rules_dir, table, tick

pytestmark = pytest.mark.flow


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
    down = outbox_tasks.send_due(engine, [notifier], 100, MONDAY)
    assert (down.sent, down.deferred) == (0, 3)  # nothing there: all put back, none lost
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        up = outbox_tasks.send_due(engine, [notifier], 100, MONDAY + timedelta(minutes=2))
        assert (up.sent, up.dead) == (2, 1)
        again = outbox_tasks.send_due(engine, [notifier], 100, MONDAY + timedelta(hours=1))
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
