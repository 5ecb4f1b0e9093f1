"""The outbox sends each message once under every timing, against a real SMTP server
(aiosmtpd on loopback): leases that run out under a slow server with a second and a third
sender, a sender SIGKILLed inside SMTP DATA, the database connection killed while marking a
message sent, a long temporary outage, and owner notices queued behind nurture mail."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import create_engine, event, select, text

from app.devstack import MailSink
from leadflow import store
from leadflow import tables as t
from leadflow.outbox import sender
from leadflow.outbox import store as outbox

NOW = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)


def queue(engine, count: int, kind: str = "owner_notification", prefix: str = "m", **extra):
    frame = pd.DataFrame(
        {
            "idempotency_key": [f"{prefix}:{i}" for i in range(count)],
            "kind": kind,
            "channel": "email",
            "recipient": [f"rep{i}@example.com" for i in range(count)],
            "lead_id": list(range(1, count + 1)),
            "subject": "New lead",
            "body": "hello",
            **extra,
        }
    )
    with engine.begin() as conn:
        outbox.enqueue(conn, frame, now=NOW)


def statuses(engine) -> Counter:
    with engine.connect() as conn:
        return Counter(conn.execute(select(t.outbox.c.status)).scalars())


def test_leases_running_out_under_a_slow_server_never_send_a_message_twice(engine) -> None:
    """Three senders, the third started mid-way, leases far shorter than a claim takes to
    send: every lease runs out while its sender is still busy, and yet each message reaches
    the server once."""
    queue(engine, 150)
    reports: list[sender.SendReport] = []
    lease = timedelta(seconds=0.4)  # a claim of 50 takes ~1 s at 20 ms a message

    with MailSink(delay=0.02) as sink:
        notifier = sink.notifier()

        def run() -> None:
            reports.append(sender.send_due(engine, [notifier], 1000, NOW, lease=lease))

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.8)
        threads.append(threading.Thread(target=run))
        threads[-1].start()
        for thread in threads:
            thread.join(timeout=120)
    ids = sink.message_ids()
    assert len(ids) == 150 and len(set(ids)) == 150
    assert sum(r.sent for r in reports) == 150
    # The leases did run out: senders found messages they had claimed in another's hands.
    assert sum(r.taken_over for r in reports) > 0
    assert statuses(engine) == {"sent": 150}
    # The Message-ID is the key's: a resend would be recognisable.
    assert set(ids) == {sender.message_id(f"m:{i}") for i in range(150)}


def test_a_sender_killed_inside_smtp_data_is_resent_once_with_the_same_message_id(
    engine, database_url, tmp_path
) -> None:
    queue(engine, 3)
    with MailSink() as sink:
        sink.hold.set()
        script = textwrap.dedent(
            f"""
            from datetime import datetime, timezone
            from leadflow import store
            from leadflow.outbox import sender
            from app.devstack import MailSink
            sink = MailSink(port={sink.port})
            sender.send_due(store.get_engine({database_url!r}), [sink.notifier()], 10,
                            datetime.fromisoformat({NOW.isoformat()!r}))
            """
        )
        child = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
        try:
            assert sink.in_data.wait(60), "the sender never reached DATA"
            os.kill(child.pid, signal.SIGKILL)  # inside DATA: the server has the message,
        finally:
            child.wait(30)
        sink.hold.clear()  # ...the sender never heard "250"
        sink.release.set()
        assert len(sink.received) == 1
        killed_id = sink.message_ids()[0]
        # Within the lease nobody touches its claim; after the lease another sender sends it.
        assert sender.send_due(engine, [sink.notifier()], 10, NOW).claimed == 0
        later = sender.send_due(
            engine,
            [sink.notifier()],
            10,
            NOW,
            clock=lambda: datetime.now(UTC) + outbox.LEASE + timedelta(seconds=1),
        )
        assert later.sent == 3
    ids = Counter(sink.message_ids())
    assert len(ids) == 3 and ids[killed_id] == 2  # the one in flight: twice, same id
    assert sum(ids.values()) == 4
    assert statuses(engine) == {"sent": 3}


@pytest.mark.postgres
def test_the_database_connection_killed_while_marking_sent_is_retried(
    engine, database_url, caplog
) -> None:
    if not store.is_postgres(engine):
        pytest.skip("pg_terminate_backend: PostgreSQL")
    queue(engine, 5)
    admin = create_engine(store.with_driver(database_url), isolation_level="AUTOCOMMIT")
    killed: list[int] = []

    def kill_own_backend(conn, cursor, statement, parameters, context, executemany) -> None:
        if killed or not statement.startswith("UPDATE outbox") or "sent_at" not in statement:
            return
        pid = conn.connection.dbapi_connection.get_backend_pid()
        killed.append(pid)
        with admin.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    event.listen(engine, "before_cursor_execute", kill_own_backend)
    caplog.set_level(logging.WARNING, logger="leadflow.routing.notices")
    try:
        with MailSink() as sink:
            report = sender.send_due(engine, [sink.notifier()], 10, NOW)
    finally:
        event.remove(engine, "before_cursor_execute", kill_own_backend)
        admin.dispose()
    assert killed, "the hook never fired"
    assert report.sent == 5 and len(sink.received) == 5
    assert len(set(sink.message_ids())) == 5  # nothing resent
    assert statuses(engine) == {"sent": 5}
    assert "database error while marking a message sent" in caplog.text


def test_a_long_outage_kills_nothing_the_breaker_saves_attempts_and_all_go_once(
    engine,
) -> None:
    queue(engine, 30)
    with MailSink() as sink:
        sink.refuse = "451 4.3.0 try again later"
        notifier = sink.notifier()
        first = sender.send_due(engine, [notifier], 500, NOW)
        assert (first.failed, first.deferred, first.dead, first.sent) == (3, 27, 0, 0)
        assert first.breaker_opened == ["email"]
        with engine.connect() as conn:
            attempts = Counter(conn.execute(select(t.outbox.c.attempts)).scalars())
        assert attempts == {0: 27, 1: 3}  # the breaker spent three attempts, not thirty
        # Five hours of refusals, a run every hour: nothing dies within the budget.
        for hour in range(1, 6):
            report = sender.send_due(engine, [notifier], 500, NOW + timedelta(hours=hour))
            assert report.dead == 0 and report.sent == 0
        sink.refuse = None  # the server recovers
        back = sender.send_due(engine, [notifier], 500, NOW + timedelta(hours=5, minutes=45))
    assert back.sent == 30 and back.undelivered == 0
    assert len(sink.received) == 30 and len(set(sink.message_ids())) == 30
    assert statuses(engine) == {"sent": 30}


def test_an_outage_past_the_budget_is_dead_with_the_reason_and_can_be_requeued(engine) -> None:
    queue(engine, 4)
    with MailSink() as sink:
        sink.refuse = "451 4.3.0 try again later"
        notifier = sink.notifier()
        reports = [
            sender.send_due(engine, [notifier], 500, NOW + timedelta(hours=hour))
            for hour in (0, 3, 6, 7)
        ]
        # Owner notices: a six-hour budget; whether tried or put back by the breaker.
        assert [r.dead for r in reports] == [0, 0, 4, 0]
        assert reports[-1].backlog["dead"] == 4
        with engine.connect() as conn:
            errors = set(conn.execute(select(t.outbox.c.last_error)).scalars())
        assert any("451" in e for e in errors)
        sink.refuse = None
        with engine.begin() as conn:
            assert outbox.requeue_dead(conn, NOW + timedelta(hours=8)) == 4
        again = sender.send_due(engine, [notifier], 500, NOW + timedelta(hours=8))
    assert again.sent == 4 and len(set(sink.message_ids())) == 4


def test_owner_notices_go_before_nurture_mail_and_are_never_capped(engine) -> None:
    queue(
        engine, 120, kind="nurture_touch", prefix="touch", next_attempt_at=NOW - timedelta(hours=2)
    )
    queue(engine, 80, prefix="owner")
    started = datetime.now(UTC)
    with MailSink() as sink:
        report = sender.send_due(engine, [sink.notifier()], 10, NOW)  # a cap of 10 others
    assert report.sent == 90
    kinds = [m["Message-ID"] for m in sink.received]
    owners = {sender.message_id(f"owner:{i}") for i in range(80)}
    assert set(kinds[:80]) == owners  # every owner notice first, none capped
    assert statuses(engine) == {"sent": 90, "pending": 110}
    with engine.connect() as conn:
        sent_at = [
            v if v.tzinfo else v.replace(tzinfo=UTC)
            for v in conn.execute(
                select(t.outbox.c.sent_at).where(t.outbox.c.status == "sent")
            ).scalars()
        ]
    # The time of sending, on the run's clock: its `now` plus the time spent sending.
    spent = datetime.now(UTC) - started
    assert min(sent_at) >= NOW and max(sent_at) <= NOW + spent
    assert max(sent_at) > min(sent_at)
