"""Benchmark: one nurture tick over a million enrolled leads, some of them due, on PostgreSQL.

Builds (by COPY, outside the timings) ``--leads`` nurturing leads, each enrolled in the
bundled ``warm-nurture`` cadence at step 2, ``--due`` of them due at ``now`` (a Monday 15:00
UTC, inside every lead's sending window), and two touches in the last week for a tenth of
them (so the frequency cap has history to read). Then times the ``nurture`` flow with no
notifier: selection and bookkeeping (candidates, claims, reads, planning, rendering, the gate,
writing enrolments, touches, outbox rows and ledger notes), sending excluded. Baseline in the
same run: COPY of the same number of outbox rows. Prints JSON with peak RSS.

    python bench/nurture.py --leads 1000000 --due 50000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    Schema,
    add_database_url,
    bench_schema,
    copy_frame,
    peak_rss_mb,
    warm_up_prefect,
)

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)  # Monday: 10:00 in New York, 16:00 in Berlin
ZONES = ["America/New_York", "Europe/Berlin", "Europe/London", "America/Chicago", "UTC"]


def iso(values: pd.Series | datetime) -> pd.Series | str:
    if isinstance(values, datetime):
        return values.isoformat()
    return values.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def main() -> None:
    """Load the store and time the baseline (setup), time a tick and a rerun (measure), print
    JSON (report)."""
    args = parse_args()
    rng = np.random.default_rng(args.seed)

    from leadflow.nurture.plan import load_context

    context = load_context()
    with bench_schema(args.database_url) as schema:
        due, baseline_seconds = setup(schema, context.version, args, rng)
        measured = measure(schema)
        print(json.dumps(report(args.leads, due, measured, baseline_seconds), indent=2))


def parse_args() -> argparse.Namespace:
    """How many leads are enrolled and due, the seed and the database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    add_database_url(parser)
    return parser.parse_args()


def setup(
    schema: Schema, version: str, args: argparse.Namespace, rng: np.random.Generator
) -> tuple[int, float]:
    """Outside the timings: COPY the enrolled leads in, then time the baseline on the same
    connection. Returns how many leads are due and the baseline's seconds."""
    n = args.leads
    frames, due = store_frames(version, n, args.due, rng)
    outbox = baseline_rows(min(args.due, n))
    conn = psycopg2.connect(schema.dsn)
    cursor = conn.cursor()
    cursor.execute(f'SET search_path TO "{schema.name}"')
    for table, frame in frames.items():
        copy_frame(cursor, table, frame)
    for table, frame in frames.items():
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), %s)", (len(frame),))
    conn.commit()
    cursor.execute("ANALYZE")
    conn.commit()
    baseline_seconds = baseline(conn, cursor, outbox)
    conn.close()
    return due, baseline_seconds


def store_frames(
    version: str, n: int, due_count: int, rng: np.random.Generator
) -> tuple[dict[str, pd.DataFrame], int]:
    """The rows to load, by table: nurturing leads, their enrolments at step 2 of
    ``warm-nurture`` (``due_count`` of them due now), and two recent touches for a tenth of
    them. Returns them and how many are due."""
    ids = np.arange(1, n + 1)
    leads = pd.DataFrame(
        {
            "id": ids,
            "email": [f"lead{i}@company{i % 40000}.example" for i in ids],
            "first_name": "Lee",
            "company": [f"Company {i % 40000}" for i in ids],
            "country": "US",
            "timezone": rng.choice(ZONES, size=n),
            "temperature": "warm",
            "score": 45.0,
            "status": "nurturing",
            "captured_at": iso(NOW),
            "last_seen_at": iso(NOW),
            "updated_at": iso(NOW),
            "status_changed_at": iso(NOW - timedelta(days=10)),
        }
    )
    due = np.zeros(n, dtype=bool)
    due[rng.choice(n, size=min(due_count, n), replace=False)] = True
    enrolments = enrolment_rows(version, ids, due)
    touches = recent_touches(version, ids, rng.choice(n, size=n // 10, replace=False))
    frames = {"leads": leads, "cadence_enrolments": enrolments, "cadence_touches": touches}
    return frames, int(due.sum())


def enrolment_rows(version: str, ids: np.ndarray, due: np.ndarray) -> pd.DataFrame:
    """Each lead active at step 2 of ``warm-nurture``; the ``due`` ones due ten minutes ago,
    the rest in two days."""
    due_at = pd.Series(pd.Timestamp(NOW + timedelta(days=2)), index=range(len(ids)))
    due_at[due] = pd.Timestamp(NOW - timedelta(minutes=10))
    return pd.DataFrame(
        {
            "id": ids,
            "lead_id": ids,
            "cadence": "warm-nurture",
            "version": version,
            "entry_no": 1,
            "step": 2,
            "status": "active",
            "due_at": iso(due_at),
            "enrolled_at": iso(NOW - timedelta(days=3)),
            "last_touch_at": iso(NOW - timedelta(days=3)),
            "deferrals": 0,
            "updated_at": iso(NOW),
        }
    )


def recent_touches(version: str, ids: np.ndarray, history: np.ndarray) -> pd.DataFrame:
    """Two touches three days ago for each lead at the ``history`` positions (so the
    frequency cap has history to read)."""
    touches = pd.DataFrame(
        {
            "enrolment_id": np.repeat(ids[history], 2),
            "lead_id": np.repeat(ids[history], 2),
            "cadence": "warm-nurture",
            "step": np.tile([1, 0], len(history)),
            "step_name": "welcome",
            "channel": "email",
            "status": "queued",
            "version": version,
            "due_at": iso(NOW - timedelta(days=3)),
            "decided_at": iso(NOW - timedelta(days=3)),
        }
    )
    touches.insert(0, "id", np.arange(1, len(touches) + 1))
    return touches


def baseline_rows(count: int) -> pd.DataFrame:
    """``count`` outbox rows of an ordinary nurture email's size."""
    return pd.DataFrame(
        {
            "idempotency_key": [f"baseline:{i}" for i in range(count)],
            "kind": "nurture_touch",
            "channel": "email",
            "recipient": "lead@example.com",
            "subject": "A subject line of ordinary length for a nurture email",
            "body": "Hi Lee,\n\n" + "A paragraph of ordinary text. " * 20,
            "status": "sent",
            "next_attempt_at": iso(NOW),
            "created_at": iso(NOW),
        }
    )


def baseline(conn: Any, cursor: Any, outbox: pd.DataFrame) -> float:
    """The baseline: the seconds a COPY of the outbox rows takes (rolled back: the rows are
    not part of the tick)."""
    seconds = copy_frame(cursor, "outbox", outbox)
    conn.rollback()
    return seconds


@dataclass(frozen=True)
class Measured:
    """The timed tick (state, seconds, summary), the rerun at the same now, and the one-time
    costs excluded."""

    state: Any
    seconds: float
    summary: dict[str, Any]
    rerun: Any
    rerun_seconds: float
    one_time_seconds: float


def measure(schema: Schema) -> Measured:
    """Time one tick of the ``nurture`` flow (no notifier), then a second at the same now
    (which should find nothing due); Prefect's start and the imports are timed apart."""
    started = time.perf_counter()
    warm_up_prefect()
    import great_expectations  # noqa: F401

    from flows.nurture import nurture

    one_time_seconds = time.perf_counter() - started
    started = time.perf_counter()
    state = nurture(now=NOW, database_url=schema.url, notifier=None, return_state=True)
    seconds = time.perf_counter() - started
    summary = state.result(raise_on_failure=False)
    again = time.perf_counter()
    rerun = nurture(now=NOW, database_url=schema.url, notifier=None, return_state=True)
    rerun_seconds = time.perf_counter() - again
    return Measured(state, seconds, summary, rerun, rerun_seconds, one_time_seconds)


def report(n: int, due: int, measured: Measured, baseline_seconds: float) -> dict[str, Any]:
    """The JSON document: the tick's time and counts, the rerun, the baseline and ratio."""
    state, seconds, summary = measured.state, measured.seconds, measured.summary
    return {
        "bench": "nurture",
        "enrolled_leads": n,
        "due": due,
        "state": state.type.value,
        "message": state.message,
        "tick_seconds": round(seconds, 2),
        "tick_target_seconds": 15,
        "candidates": summary.get("candidates"),
        "queued": summary.get("queued"),
        "deferred_cap": summary.get("deferred_cap"),
        "deferred_quiet": summary.get("deferred_quiet"),
        "batches": summary.get("batches"),
        "rerun_seconds_same_now": round(measured.rerun_seconds, 2),
        "rerun_queued": (measured.rerun.result(raise_on_failure=False) or {}).get("queued"),
        "baseline_copy_outbox_seconds": round(baseline_seconds, 2),
        "ratio_to_copy": round(baseline_seconds / seconds, 3),
        "one_time_imports_seconds_excluded": round(measured.one_time_seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


if __name__ == "__main__":
    main()
