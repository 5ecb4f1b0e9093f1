"""`leadflow outbox`: look at what waits to be sent and act on it.

- ``list``: counts by status and kind, the commonest errors, and the messages of a status or
  kind (recipients masked);
- ``retry``: make messages waiting out a backoff due now (after the server is fixed);
- ``requeue-dead``: give dead messages a fresh budget;
- ``send``: send what is due now, urgent first (what route, sla and nurture do after their
  hop), for a flush by hand or a sender of its own on a schedule.
Exit codes as everywhere: 0 done; 3 when ``send`` left messages undelivered.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import Any

from app.cli.common import (
    DATABASE,
    EXIT_BAD_INPUT,
    EXIT_OK,
    Command,
    delivery_line,
    emit,
    timestamp,
    undelivered_code,
)


def _human_list(data: dict[str, Any]) -> str:
    lines = [
        "outbox: "
        + (", ".join(f"{n} {s}" for s, n in sorted(data["by_status"].items())) or "empty")
    ]
    for row in data["by_status_kind"]:
        lines.append(f"  {row['status']:<8} {row['kind']:<20} {row['messages']:>8}")
    if data["errors"]:
        lines.append("commonest errors:")
        lines.extend(
            f"  {row['messages']:>6}  {row['status']:<8} {row['error']}" for row in data["errors"]
        )
    if data.get("messages"):
        lines.append(f"{'id':>8}  {'kind':<18} {'status':<8} {'tries':>5}  {'due':<25} to / error")
        for m in data["messages"]:
            lines.append(
                f"{m['id']:>8}  {m['kind']:<18} {m['status']:<8} {m['attempts']:>5}  "
                f"{str(m['next_attempt_at'])[:25]:<25} {m['recipient']}"
                + (f"  {m['last_error']}" if m["last_error"] else "")
            )
    return "\n".join(lines)


def cmd_outbox(args: argparse.Namespace) -> int:
    from leadflow import store
    from leadflow.outbox import store as outbox
    from leadflow.settings import get_settings

    store.upgrade()
    engine = store.get_engine(get_settings().database_url)
    now = args.now or datetime.now(UTC)
    kinds = [args.kind] if getattr(args, "kind", None) else None
    if args.action == "list":
        with engine.connect() as conn:
            data = outbox.overview(conn)
            data["backlog"] = outbox.backlog(conn, now)
            if args.status or args.kind:
                data["messages"] = outbox.messages(
                    conn, status=args.status, kind=args.kind, limit=args.limit
                )
        emit(args, data, _human_list)
        return EXIT_OK
    if args.action in ("retry", "requeue-dead"):
        ids = args.ids or None
        with engine.begin() as conn:
            if args.action == "retry":
                count = outbox.retry_now(conn, now, ids, kinds)
                data = {"due_now": count}
            else:
                count = outbox.requeue_dead(conn, now, ids, kinds)
                data = {"requeued": count}
        emit(args, data, lambda d: f"{count} message(s) due now")
        return EXIT_OK
    # send
    from leadflow.outbox.sender import send_due
    from tasks.outbox import resolve_notifiers, with_calendars

    spec = args.notifier or os.environ.get("LEADFLOW_NOTIFIER")
    if not spec:
        print(
            "leadflow: outbox send needs --notifier block:NAME or maildir:PATH "
            "(or LEADFLOW_NOTIFIER)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    report = send_due(engine, with_calendars(resolve_notifiers(spec)), args.limit, now).as_dict()
    emit(args, report, delivery_line)
    return undelivered_code(report)


def _outbox_arguments(command: argparse.ArgumentParser) -> None:
    from leadflow.outbox.store import KINDS

    actions = command.add_subparsers(dest="action", required=True)
    listed = actions.add_parser("list", help="counts by status and kind, errors, messages")
    listed.add_argument("--status", choices=["pending", "sending", "sent", "failed", "dead"])
    listed.add_argument("--kind", choices=KINDS)
    listed.add_argument("--limit", type=int, default=50)
    retry = actions.add_parser("retry", help="messages waiting out a backoff: due now")
    requeue = actions.add_parser("requeue-dead", help="dead messages: a fresh budget, due now")
    for action in (retry, requeue):
        action.add_argument("ids", nargs="*", type=int, help="outbox ids (from `list`)")
        action.add_argument("--kind", choices=KINDS)
    send = actions.add_parser("send", help="send what is due now, urgent first")
    send.add_argument("--notifier", help="block:NAME or maildir:PATH (default LEADFLOW_NOTIFIER)")
    send.add_argument(
        "--limit",
        type=int,
        default=5000,
        help="at most this many beyond owner notices and escalations",
    )
    for action in (listed, retry, requeue, send):
        action.add_argument("--now", type=timestamp)
        action.add_argument("--json", action="store_true")


COMMANDS = (
    Command(
        "outbox",
        cmd_outbox,
        "what waits to be sent: list, retry, requeue-dead, send",
        _outbox_arguments,
        (*DATABASE, "LEADFLOW_NOTIFIER", "LEADFLOW_PUBLIC_URL", "PREFECT_API_URL"),
    ),
)
