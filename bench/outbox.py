"""Benchmark: the outbox sends each message once, at what rate, through a slow server and an
outage.

On a throwaway PostgreSQL schema, queues ``--messages`` messages (one in ten an owner notice,
the rest nurture touches) and delivers them to a real SMTP server on loopback (aiosmtpd)
answering each message after ``--delay`` seconds, with two sender processes started at once
and a third started ``--third-after`` seconds later, each looping ``send_due`` until nothing
is left. Leases are the production ones (two minutes, renewed before each send). Scenario
``steady``: the server is up throughout. Scenario ``outage``: the server is stopped
``--outage-at`` seconds in and comes back ``--outage`` seconds later.

Reports per scenario: messages received by the server, distinct message ids (equal when
nothing went twice), outbox rows sent, seconds, messages/s, and per sender what it sent and
how many messages it found taken over. The in-run baseline: one plain ``smtplib`` client
sending ``--baseline`` messages to the same server with no database at all (messages/s),
times three connections. Prints JSON.

    python bench/outbox.py --messages 50000 --delay 0.02 --outage 60
"""

from __future__ import annotations

import argparse
import json
import smtplib
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_database_url, bench_schema, peak_rss_mb

from app.devstack import MailSink
from leadflow import store
from leadflow.outbox import store as outbox

SENDER = textwrap.dedent(
    """
    import json, sys, time
    from datetime import UTC, datetime
    from leadflow import store
    from leadflow.outbox import sender
    from leadflow.outbox import store as outbox
    from app.devstack import MailSink

    url, port = sys.argv[1], int(sys.argv[2])
    engine = store.get_engine(url)
    notifier = MailSink(port=port).notifier(timeout=10)
    totals = {"sent": 0, "taken_over": 0, "failed": 0, "deferred": 0, "dead": 0, "runs": 0}
    while True:
        report = sender.send_due(engine, [notifier], 5000, datetime.now(UTC))
        totals["runs"] += 1
        for name in ("sent", "taken_over", "failed", "deferred", "dead"):
            totals[name] += getattr(report, name)
        left = report.backlog
        if left["due"] + left["waiting"] + left["sending"] == 0:
            break
        if report.claimed == 0:
            time.sleep(1)  # what is left is leased by another sender or backing off
    print(json.dumps(totals))
    """
)


def queue(url: str, count: int) -> None:
    now = datetime.now(UTC)
    frame = pd.DataFrame(
        {
            "idempotency_key": [f"bench:{i}" for i in range(count)],
            "kind": [
                "owner_notification" if i % 10 == 0 else "nurture_touch" for i in range(count)
            ],
            "channel": "email",
            "recipient": [f"lead{i}@example.com" for i in range(count)],
            "lead_id": list(range(1, count + 1)),
            "subject": "Hello",
            "body": "A short message body, about the size of a nurture touch.\n" * 10,
        }
    )
    with store.get_engine(url).begin() as conn:
        outbox.enqueue(conn, frame, now=now)


def baseline(sink: MailSink, count: int) -> float:
    """Messages per second for one plain SMTP client, no database."""
    client = smtplib.SMTP("127.0.0.1", sink.port, timeout=10)
    started = time.perf_counter()
    for i in range(count):
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = (
            "b@example.com",
            f"x{i}@example.com",
            "x",
        )
        message.set_content("A short message body, about the size of a nurture touch.\n" * 10)
        client.send_message(message)
    seconds = time.perf_counter() - started
    client.quit()
    return count / seconds


def scenario(args: argparse.Namespace, outage: bool) -> dict:
    with bench_schema(args.database_url) as schema, MailSink(delay=args.delay) as sink:
        queue(schema.url, args.messages)
        started = time.perf_counter()

        def launch() -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, "-c", SENDER, schema.url, str(sink.port)],
                stdout=subprocess.PIPE,
                text=True,
            )

        senders = [launch(), launch()]
        down_at = up_at = None
        third_started = False
        while any(p.poll() is None for p in senders):
            elapsed = time.perf_counter() - started
            if not third_started and elapsed >= args.third_after:
                senders.append(launch())
                third_started = True
            if outage and down_at is None and elapsed >= args.outage_at:
                sink.__exit__()  # connections refused from now on
                down_at = elapsed
            if (
                outage
                and down_at is not None
                and up_at is None
                and elapsed >= down_at + args.outage
            ):
                sink.__enter__()
                up_at = elapsed
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        if outage and up_at is None:  # finished before the outage ended: bring it back
            sink.__enter__()
        reports = [json.loads(p.stdout.read() or "{}") for p in senders]
        with store.get_engine(schema.url).connect() as conn:
            states = outbox.counts(conn)
        store.get_engine(schema.url).dispose()
        ids = sink.message_ids()
    return {
        "scenario": "outage" if outage else "steady",
        "messages": args.messages,
        "received": len(ids),
        "distinct": len(set(ids)),
        "outbox": states,
        "seconds": round(seconds, 1),
        "messages_per_s": round(len(set(ids)) / seconds, 1),
        "outage_s": [round(down_at, 1), round(up_at, 1)] if outage and down_at else None,
        "senders": reports,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url(parser)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--delay", type=float, default=0.02, help="server seconds per message")
    parser.add_argument("--third-after", type=float, default=30.0)
    parser.add_argument("--outage-at", type=float, default=60.0)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the server is down")
    parser.add_argument("--baseline", type=int, default=1000)
    parser.add_argument("--scenario", choices=["steady", "outage", "both"], default="both")
    args = parser.parse_args()
    with MailSink(delay=args.delay) as sink:
        raw = baseline(sink, args.baseline)
    results = [
        scenario(args, outage)
        for outage in {"steady": [False], "outage": [True], "both": [False, True]}[args.scenario]
    ]
    print(
        json.dumps(
            {
                "baseline_plain_smtp_per_connection_per_s": round(raw, 1),
                "baseline_three_connections_per_s": round(3 * raw, 1),
                "results": results,
                "peak_rss_mb": peak_rss_mb(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
