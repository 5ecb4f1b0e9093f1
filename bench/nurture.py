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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_database_url, bench_schema, copy_frame, peak_rss_mb, warm_up_prefect

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)  # Monday: 10:00 in New York, 16:00 in Berlin
ZONES = ["America/New_York", "Europe/Berlin", "Europe/London", "America/Chicago", "UTC"]


def iso(values: pd.Series | datetime) -> pd.Series | str:
    if isinstance(values, datetime):
        return values.isoformat()
    return values.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    add_database_url(parser)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    from leadflow.nurture.plan import load_context

    context = load_context()
    n = args.leads
    ids = np.arange(1, n + 1)
    with bench_schema(args.database_url) as schema:
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
        due[rng.choice(n, size=min(args.due, n), replace=False)] = True
        due_at = pd.Series(pd.Timestamp(NOW + timedelta(days=2)), index=range(n))
        due_at[due] = pd.Timestamp(NOW - timedelta(minutes=10))
        enrolments = pd.DataFrame(
            {
                "id": ids,
                "lead_id": ids,
                "cadence": "warm-nurture",
                "version": context.version,
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
        history = rng.choice(n, size=n // 10, replace=False)
        touches = pd.DataFrame(
            {
                "enrolment_id": np.repeat(ids[history], 2),
                "lead_id": np.repeat(ids[history], 2),
                "cadence": "warm-nurture",
                "step": np.tile([1, 0], len(history)),
                "step_name": "welcome",
                "channel": "email",
                "status": "queued",
                "version": context.version,
                "due_at": iso(NOW - timedelta(days=3)),
                "decided_at": iso(NOW - timedelta(days=3)),
            }
        )
        touches.insert(0, "id", np.arange(1, len(touches) + 1))
        baseline = pd.DataFrame(
            {
                "idempotency_key": [f"baseline:{i}" for i in range(min(args.due, n))],
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
        conn = psycopg2.connect(schema.dsn)
        cursor = conn.cursor()
        cursor.execute(f'SET search_path TO "{schema.name}"')
        copy_frame(cursor, "leads", leads)
        copy_frame(cursor, "cadence_enrolments", enrolments)
        copy_frame(cursor, "cadence_touches", touches)
        for table, count in (
            ("leads", n),
            ("cadence_enrolments", n),
            ("cadence_touches", len(touches)),
        ):
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), %s)", (count,))
        conn.commit()
        cursor.execute("ANALYZE")
        conn.commit()
        baseline_seconds = copy_frame(cursor, "outbox", baseline)
        conn.rollback()  # the baseline's rows are not part of the tick
        conn.close()
        del leads, enrolments, touches, baseline

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
        print(
            json.dumps(
                {
                    "bench": "nurture",
                    "enrolled_leads": n,
                    "due": int(due.sum()),
                    "state": state.type.value,
                    "message": state.message,
                    "tick_seconds": round(seconds, 2),
                    "tick_target_seconds": 15,
                    "candidates": summary.get("candidates"),
                    "queued": summary.get("queued"),
                    "deferred_cap": summary.get("deferred_cap"),
                    "deferred_quiet": summary.get("deferred_quiet"),
                    "batches": summary.get("batches"),
                    "rerun_seconds_same_now": round(rerun_seconds, 2),
                    "rerun_queued": (rerun.result(raise_on_failure=False) or {}).get("queued"),
                    "baseline_copy_outbox_seconds": round(baseline_seconds, 2),
                    "ratio_to_copy": round(baseline_seconds / seconds, 3),
                    "one_time_imports_seconds_excluded": round(one_time_seconds, 2),
                    "peak_rss_mb": peak_rss_mb(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
