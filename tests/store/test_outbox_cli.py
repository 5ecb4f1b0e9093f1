"""``leadflow outbox list|retry|requeue-dead|send``, as a person at a terminal would use
them, on SQLite and PostgreSQL (a route run's exit code is in flows/test_outbox_cli_route.py)."""

from __future__ import annotations

import json
import mailbox
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import select, update

from app import cli
from leadflow import tables as t
from leadflow.outbox import store as outbox

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)


def queued(engine, count: int) -> None:
    frame = pd.DataFrame(
        {
            "idempotency_key": [f"k{i}" for i in range(count)],
            "kind": ["owner_notification"] * (count - 1) + ["nurture_touch"],
            "channel": "email",
            "recipient": [f"person{i}@buyer.example" for i in range(count)],
            "subject": "hi",
            "body": "hello",
        }
    )
    with engine.begin() as conn:
        outbox.enqueue(conn, frame, now=NOW)


def run(capsys, *argv: str) -> tuple[int, dict, str]:
    """The command's exit code, its JSON (less the database it says it read) and stderr."""
    code = cli.main([*argv, "--json"])
    out, err = capsys.readouterr()
    data = json.loads(out) if out.strip() else {}
    if data:
        assert data.pop("database_source") == "from LEADFLOW_DATABASE_URL"
        assert data.pop("database")
    return code, data, err


def test_outbox_commands_list_send_retry_and_requeue(engine, tmp_path, capsys) -> None:
    queued(engine, 4)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    # A notifier that cannot deliver: put back, not lost, and the exit code says so.
    code, sent, _ = run(
        capsys, "outbox", "send", "--notifier", f"maildir:{blocked}/box", "--now", NOW.isoformat()
    )
    assert code == 3 and (sent["sent"], sent["deferred"]) == (0, 3)
    # The channel's breaker opened on the owner notices: the nurture touch was not tried.
    assert sent["backlog"] == {"due": 1, "waiting": 3, "sending": 0, "dead": 0}
    code, listed, _ = run(capsys, "outbox", "list", "--status", "pending")
    assert code == 0 and listed["by_status"] == {"pending": 4}
    assert {m["recipient"] for m in listed["messages"]} == {"p…@buyer.example"}
    assert listed["errors"][0]["messages"] == 3 and "maildir" in listed["errors"][0]["error"]
    assert "person0@buyer.example" not in json.dumps(listed)  # masked, errors included
    # Retry makes them due now; a working notifier sends them, once.
    code, retried, _ = run(capsys, "outbox", "retry", "--now", NOW.isoformat())
    assert (code, retried) == (0, {"due_now": 3})
    box = tmp_path / "box"
    code, sent, _ = run(
        capsys, "outbox", "send", "--notifier", f"maildir:{box}", "--now", NOW.isoformat()
    )
    assert code == 0 and sent["sent"] == 4 and sent["undelivered"] == 0
    assert len(mailbox.Maildir(box)) == 4
    # Dead messages: listed by status with their reason, requeued by id.
    with engine.begin() as conn:
        conn.execute(
            update(t.outbox)
            .where(t.outbox.c.idempotency_key.in_(["k0", "k1"]))
            .values(status="dead", last_error="SMTP 550: p…@buyer.example unknown")
        )
        dead_ids = (
            conn.execute(
                select(t.outbox.c.id).where(t.outbox.c.status == "dead").order_by(t.outbox.c.id)
            )
            .scalars()
            .all()
        )
    code, listed, _ = run(capsys, "outbox", "list", "--status", "dead")
    assert [m["id"] for m in listed["messages"]] == sorted(dead_ids, reverse=True)
    code, requeued, _ = run(capsys, "outbox", "requeue-dead", str(dead_ids[0]))
    assert (code, requeued) == (0, {"requeued": 1})
    code, listed, _ = run(capsys, "outbox", "list")
    assert listed["by_status"] == {"sent": 2, "dead": 1, "pending": 1}
    # A person reading the plain output sees no None and no raw address.
    assert cli.main(["outbox", "list", "--status", "dead"]) == 0
    text = capsys.readouterr().out
    assert "None" not in text and "@buyer.example" in text and "person1@" not in text
