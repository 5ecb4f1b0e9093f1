"""The outbox sender, against a real SMTP server (aiosmtpd) and a real HTTP server
(pytest-httpserver) on loopback (the owner messages themselves are in
unit/notify/test_owner_messages.py)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from blocks.notifier import SmtpNotifier, WebhookNotifier
from leadflow import tables as t
from leadflow.outbox import store as outbox
from leadflow.routing import notices as notify
from leadflow.routing.decide import empty_state, route_leads
from leadflow.routing.rules import load_rules
from tasks import outbox as outbox_tasks

from helpers import NOTIFY_NOW as NOW
from helpers import ROOT, Inbox, free_port, routed_messages


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield (
            inbox,
            SmtpNotifier(
                host="127.0.0.1",
                port=controller.port,
                from_address="leads@example.com",
                starttls=False,
            ),
        )
    finally:
        controller.stop()


def test_sent_exactly_once_across_reruns_and_a_refused_recipient_fails_alone(
    engine, smtp, caplog
) -> None:
    inbox, notifier = smtp
    _, messages = routed_messages()
    refused = messages.iloc[[0]].assign(idempotency_key="x", recipient="nobody@example.com")
    with engine.begin() as conn:
        outbox.enqueue(conn, pd.concat([messages, refused]), now=NOW)
    caplog.set_level(logging.INFO, logger="leadflow.routing.notices")
    report = outbox_tasks.send_outbox.fn(
        str(engine.url.render_as_string(hide_password=False)), notifier, 50, NOW
    )
    assert (report["sent"], report["dead"]) == (2, 1)
    # Both DE leads are Felix's: only his territory covers Germany.
    assert [m["To"] for m in inbox.messages] == ["felix.weber@leadflow-demo.example"] * 2
    assert len({m["Message-ID"] for m in inbox.messages}) == 2
    ics = [p for m in inbox.messages for p in m.walk() if p.get_content_type() == "text/calendar"]
    assert len(ics) == 1 and b"BEGIN:VEVENT" in ics[0].get_payload(decode=True)
    # Rerun later, and enqueue the same decisions again: nothing is sent twice.
    with engine.begin() as conn:
        assert outbox.enqueue(conn, messages, now=NOW) == 0
    again = outbox_tasks.send_due(engine, [notifier], 50, NOW + timedelta(days=1))
    assert again.claimed == 0 and len(inbox.messages) == 2
    with engine.connect() as conn:
        dead = conn.execute(select(t.outbox).where(t.outbox.c.idempotency_key == "x")).one()
    assert dead.status == "dead" and dead.attempts == 1 and "550" in dead.last_error
    assert "nobody@example.com" not in caplog.text and "n…@example.com" in caplog.text


def test_smtp_down_leaves_messages_pending_and_a_later_call_sends_them(engine) -> None:
    _, messages = routed_messages()
    with engine.begin() as conn:
        outbox.enqueue(conn, messages, now=NOW)
    port = free_port()
    down = SmtpNotifier(host="127.0.0.1", port=port, from_address="l@example.com", starttls=False)
    report = outbox_tasks.send_due(engine, [down], 50, NOW)
    assert (report.sent, report.deferred) == (0, 2)
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.outbox.c.status, t.outbox.c.attempts, t.outbox.c.last_error)
        ).all()
    assert {(r.status, r.attempts) for r in rows} == {("pending", 0)}
    assert all("SMTP 127.0.0.1" in r.last_error for r in rows)
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert outbox_tasks.send_due(engine, [down], 50, NOW + timedelta(seconds=30)).claimed == 0
        assert outbox_tasks.send_due(engine, [down], 50, NOW + timedelta(minutes=1)).sent == 2
    finally:
        controller.stop()
    assert len(inbox.messages) == 2


def test_webhook_500_is_retried_with_backoff_then_sent_once(engine, httpserver) -> None:
    hook = WebhookNotifier(url=httpserver.url_for("/hook"), token="s3cret")
    frame = pd.DataFrame(
        {
            "idempotency_key": ["hook:1"],
            "kind": ["webhook"],
            "channel": ["webhook"],
            "recipient": ["crm"],
            "payload": [{"lead_id": 1, "owner": "ava-ng"}],
        }
    )
    with engine.begin() as conn:
        outbox.enqueue(conn, frame, now=NOW)
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("busy", status=500)
    first = outbox_tasks.send_due(engine, [hook], 10, NOW)
    assert (first.sent, first.failed) == (0, 1)
    assert (
        outbox_tasks.send_due(engine, [hook], 10, NOW + timedelta(seconds=29)).claimed == 0
    )  # jitter: 30-60 s
    httpserver.expect_oneshot_request(
        "/hook",
        method="POST",
        headers={"Authorization": "Bearer s3cret", "Idempotency-Key": "hook:1"},
        json={"lead_id": 1, "owner": "ava-ng"},
    ).respond_with_json({"ok": True})
    second = outbox_tasks.send_due(engine, [hook], 10, NOW + timedelta(minutes=1))
    assert second.sent == 1
    assert outbox_tasks.send_due(engine, [hook], 10, NOW + timedelta(days=1)).claimed == 0
    httpserver.check_assertions()
    assert len(httpserver.log) == 2
    with engine.connect() as conn:
        row = conn.execute(select(t.outbox)).one()
    assert (row.status, row.attempts) == ("sent", 2)
    assert "s3cret" not in repr(hook)


def test_slots_proposed_in_an_earlier_run_are_not_offered_again(engine) -> None:
    from leadflow.routing import store as routing_store

    rules, version, _ = load_rules(ROOT / "rules" / "routing.yaml")
    hot = pd.DataFrame(
        {
            "id": [1],
            "first_name": ["Ada"],
            "country": ["DE"],
            "region": ["EMEA"],
            "temperature": ["hot"],
        }
    )
    first = notify.owner_messages(
        route_leads(hot, rules, empty_state(), NOW, version=version).assignments, hot, rules, NOW
    )
    with engine.begin() as conn:
        outbox.enqueue(conn, first, now=NOW)
        busy = routing_store.proposed_slots(conn, rules, NOW)
    assert len(busy["felix-weber"]) == 3
    other = hot.assign(id=[2])
    second = notify.owner_messages(
        route_leads(other, rules, empty_state(), NOW, version=version).assignments,
        other,
        rules,
        NOW,
        busy=busy,
    )
    taken = {tuple(s) for s in first["payload"].iloc[0]["slots"]}
    offered = {tuple(s) for s in second["payload"].iloc[0]["slots"]}
    assert len(offered) == 3 and not taken & offered
