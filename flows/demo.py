"""The demo `make run` runs: sample data through every hop, then the ledger audit.

Uses the embedded defaults: a SQLite file under ``var/`` and Prefect's ephemeral API.
Sample data is generated once per (size, seed) under ``var/sample``; running the demo again
re-ingests the same files, which the ledger recognises as no-ops.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State

from flows.capture import capture
from flows.pipeline import pipeline
from leadflow import audit, reference, store
from leadflow.generate import generate
from leadflow.settings import get_settings


@flow(name="demo", flow_run_name="demo-{leads}-leads")
def demo(leads: int = 5000, seed: int = 7) -> State:
    started = time.monotonic()
    settings = get_settings()
    revision = store.upgrade(settings.database_url)
    sample = settings.var_dir / "sample" / f"{leads}-seed{seed}"
    if not (sample / "leads.csv").exists():
        generate(sample, leads=leads, seed=seed)
    engine = store.get_engine(settings.database_url)
    with engine.begin() as conn:
        reps = reference.load(conn, "reps", sample / "reps.csv")
        accounts = reference.load(conn, "accounts", sample / "accounts.csv")
    summary: dict[str, Any] = {
        "database": settings.database_url.split("///")[-1]
        if settings.database_url.startswith("sqlite")
        else "postgresql",
        "revision": revision,
        "sample": str(sample),
        "reference": {"reps": reps, "accounts": accounts},
    }
    captured = capture(str(sample / "leads.csv"), source="sample", return_state=True)
    summary["capture"] = captured.result(raise_on_failure=False)
    for step, state in _later_steps(sample):
        summary[step] = state.result(raise_on_failure=False)
        if not state.is_completed():
            return Failed(message=f"{step}: {state.message}", data=summary)
    ran = pipeline(provider=f"file:{sample / 'firmographics.csv'}", return_state=True)
    summary["pipeline"] = ran.result(raise_on_failure=False)
    with engine.connect() as conn:
        report = audit.run_audit(conn)
        summary["status_counts"] = audit.status_counts(conn)
    summary["audit"] = report.as_dict()
    summary["data_docs"] = str(settings.data_docs_dir / "index.html")
    summary["seconds"] = round(time.monotonic() - started, 1)
    if not captured.is_completed() or not ran.is_completed() or not report.ok:
        return Failed(message="demo finished with failures (see summary)", data=summary)
    return Completed(message="demo finished", data=summary)


def _later_steps(sample: Any) -> list[tuple[str, State]]:
    """What the hops after capture need besides leads: engagement events."""
    events = capture(
        str(sample / "engagement_events.csv"), source="sample", target="events", return_state=True
    )
    return [("events", events)]


def describe(summary: dict[str, Any]) -> str:
    """The short summary `make run` prints."""
    if not summary or "capture" not in summary:
        return f"demo did not finish: {summary.get('error', summary)}"
    cap = summary["capture"] or {}
    lines = [
        f"database: {summary['database']} (revision {summary['revision']})",
        f"sample data: {summary['sample']}",
        f"capture: received {cap.get('received', 0)}, inserted {cap.get('inserted', 0)}, "
        f"merged {cap.get('merged', 0)}, quarantined {cap.get('quarantined', 0)}"
        + (" (same files as before: no-op)" if cap.get("duplicates") else ""),
    ]
    for step in ("events",):
        if step in summary and isinstance(summary[step], dict):
            data = summary[step]
            lines.append(
                f"{step}: received {data.get('received', 0)}, inserted {data.get('inserted', 0)}, "
                f"merged {data.get('merged', 0)}, quarantined {data.get('quarantined', 0)}"
            )
    pipe = summary.get("pipeline") or {}
    for hop, data in (pipe.get("hops") or {}).items():
        shown = {
            k: v
            for k, v in (data or {}).items()
            if isinstance(v, int | float | str) and k != "seconds"
        }
        lines.append(f"{hop}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    counts = summary.get("status_counts", {})
    lines.append("leads by status: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    report = summary.get("audit", {})
    lines.append(
        f"ledger audit: {'OK' if report.get('ok') else 'BROKEN'} "
        f"(received {report.get('received')} = inserted {report.get('inserted')} + merged "
        f"{report.get('merged')} + quarantined {report.get('quarantined')})"
    )
    lines.append(f"data docs: {summary.get('data_docs')}")
    lines.append(f"time taken: {summary.get('seconds')} s")
    return "\n".join(lines)
