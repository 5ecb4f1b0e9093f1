"""The demo `make run` runs: sample data through every hop, then the ledger audit.

Uses the embedded defaults: a SQLite file under ``var/`` and Prefect's ephemeral API.
Sample data is generated once per (size, seed) under ``var/sample``; running the demo again
re-ingests the same files, which the ledger recognises as no-ops.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State

from app.demo_booking import book_a_few
from app.demo_steps import describe, ledger_report, month, prepare_sample, sales_week, sample_file
from flows.capture import capture
from flows.pipeline import pipeline
from flows.report import report
from tasks import rules_check

__all__ = ["demo", "describe"]


@flow(name="demo", flow_run_name="demo-{leads}-leads")
def demo(leads: int = 5000, seed: int = 7, days: int = 30) -> State:
    # Every rules file of the pipeline, the sales week and the month, before anything moves.
    if refused := rules_check.refusal(rules_check.demo):
        return refused
    started = time.monotonic()
    summary: dict[str, Any] = prepare_sample(leads, seed)
    captured = capture(sample_file(summary, "leads.csv"), source="sample", return_state=True)
    summary["capture"] = captured.result(raise_on_failure=False)
    events = capture(
        sample_file(summary, "engagement_events.csv"),
        source="sample",
        target="events",
        return_state=True,
    )
    summary["events"] = events.result(raise_on_failure=False)
    if not events.is_completed():
        return Failed(message=f"events: {events.message}", data=summary)
    ran = pipeline(
        provider=f"file:{sample_file(summary, 'firmographics.csv')}",
        notifier=f"maildir:{summary['mail']}",  # owners' notifications land in var/mail
        return_state=True,
    )
    summary["pipeline"] = ran.result(raise_on_failure=False)
    if ran.is_completed():
        # A few routed leads open the link routing mailed them and book their first call.
        summary["booking"] = book_a_few()
        # A week of sales work after routing: activities in, SLA checks with `now` moved on.
        start = datetime.now(UTC)
        summary["sales_week"] = sales_week(summary, start=start)
        # Then a month: nurture ticks, SLA checks and recycling with `now` moved forward.
        summary["month"] = month(summary, start + timedelta(days=7), days)
    summary["kpi"] = report(return_state=True).result(raise_on_failure=False)
    summary.update(ledger_report())
    summary["seconds"] = round(time.monotonic() - started, 1)
    if not captured.is_completed() or not ran.is_completed() or not summary["audit"]["ok"]:
        return Failed(message="demo finished with failures (see summary)", data=summary)
    return Completed(message="demo finished", data=summary)
