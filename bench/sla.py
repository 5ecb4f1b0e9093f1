"""SLA check speed on PostgreSQL: one check over N open timers (the sla flow: close, start
timers for new assignments, meet timers with new activities, warn, level-1 breaches with owner
and manager messages queued, level-2 reassignments through routing; sending excluded), against
a baseline: PostgreSQL's raw COPY of N timer-sized rows.

    python bench/sla.py --timers 1000000

The store is loaded with COPY into a fresh schema outside the timings: N routed leads with
their assignments and open timers (most not yet due; ``--warn`` of them in the warning window,
``--due`` past due, ``--escalate`` past escalation), ``--new`` assignments without timers yet,
and ``--activities`` new activities meeting timers. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import psycopg2

from bench.common import add_database_url, bench_schema, copy_frame, peak_rss_mb, warm_up_prefect

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)  # a Monday
COUNTRIES = ["US", "US", "CA", "GB", "DE", "FR", "AU", "JP", "BR"]
REGIONS = {"US": "NA", "CA": "NA", "GB": "EMEA", "DE": "EMEA", "FR": "EMEA", "AU": "APAC",
           "JP": "APAC", "BR": "LATAM"}  # fmt: skip


def iso(values: pd.Series | datetime) -> pd.Series | str:
    if isinstance(values, datetime):
        return values.isoformat()
    return values.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=1_000_000)
    parser.add_argument("--warn", type=float, default=0.05)
    parser.add_argument("--due", type=float, default=0.04)
    parser.add_argument("--escalate", type=float, default=0.002)
    parser.add_argument("--new", type=int, default=20_000)
    parser.add_argument("--activities", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    add_database_url(parser)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    from leadflow import store
    from leadflow.routing.store import sync_reps
    from tasks.routing import load_context

    # The bundled routing rules without capacity limits, so level 2 reassigns rather than
    # finding every pool full (a million open leads is far past any rep's max_open).
    source = Path(__file__).resolve().parents[1] / "rules" / "routing.yaml"
    bundled = Path(f"/tmp/bench-sla-{os.getpid()}-routing.yaml")
    bundled.write_text(
        "\n".join(
            line
            for line in source.read_text().splitlines()
            if not line.strip().startswith("capacity:")
        )
    )
    with bench_schema(args.database_url) as schema:
        context = load_context.fn(str(bundled))
        with store.get_engine(schema.url).begin() as conn:
            rep_ids = sync_reps(conn, context.rules, NOW)
        # Reps who can own a lead in each region (the pools' members).
        pools = [r for r in context.rules.reps if r.pools]
        n, new = args.timers, args.new
        total = n + new
        ids = np.arange(1, total + 1)
        country = rng.choice(COUNTRIES, size=total)
        owner_code = rng.choice([r.id for r in pools], size=total)
        owner = pd.Series(owner_code).map(rep_ids).to_numpy()
        leads = pd.DataFrame(
            {
                "id": ids,
                "email": [f"lead{i}@company{i % 40000}.example" for i in ids],
                "first_name": "Lee",
                "company": [f"Company {i % 40000}" for i in ids],
                "country": country,
                "region": [REGIONS[c] for c in country],
                "temperature": rng.choice(["hot", "warm"], size=total, p=[0.1, 0.9]),
                "score": 80.0,
                "status": "routed",
                "owner_rep_id": owner,
                "captured_at": iso(NOW),
                "last_seen_at": iso(NOW),
                "updated_at": iso(NOW),
                "status_changed_at": iso(NOW),
            }
        )
        assigned_at = pd.Series(pd.Timestamp(NOW - timedelta(hours=1)), index=range(total))
        assignments = pd.DataFrame(
            {
                "id": ids,
                "lead_id": ids,
                "rep_id": owner,
                "rep_code": owner_code,
                "step": "rule",
                "version": "bench",
                "reason": "bench",
                "assigned_at": iso(assigned_at),
                "sla_stage": ["assigned"] * n + [None] * new,
            }
        )
        # Open timers: where each stands relative to NOW.
        kind = rng.choice(
            ["later", "warn", "due", "escalate"],
            size=n,
            p=[1 - args.warn - args.due - args.escalate, args.warn, args.due, args.escalate],
        )
        due = pd.Series(pd.Timestamp(NOW + timedelta(hours=4)), index=range(n))
        warn = pd.Series(pd.Timestamp(NOW + timedelta(hours=3)), index=range(n))
        late = pd.Series(pd.Timestamp(NOW + timedelta(hours=8)), index=range(n))
        warn[kind == "warn"] = pd.Timestamp(NOW - timedelta(minutes=5))
        due[kind == "due"] = pd.Timestamp(NOW - timedelta(minutes=5))
        warn[kind == "due"] = pd.Timestamp(NOW - timedelta(minutes=30))
        for mask in (kind == "escalate",):
            warn[mask] = pd.Timestamp(NOW - timedelta(hours=3))
            due[mask] = pd.Timestamp(NOW - timedelta(hours=2))
            late[mask] = pd.Timestamp(NOW - timedelta(minutes=5))
        timers = pd.DataFrame(
            {
                "id": ids[:n],
                "lead_id": ids[:n],
                "assignment_id": ids[:n],
                "rep_id": owner[:n],
                "policy": "warm-first-touch",
                "started_at": iso(assigned_at[:n]),
                "warn_at": iso(warn),
                "due_at": iso(due),
                "escalate_at": iso(late),
                "level": 0,
                "created_at": iso(NOW),
            }
        )
        chosen = rng.choice(n, size=min(args.activities, n), replace=False)
        activities = pd.DataFrame(
            {
                "id": np.arange(1, len(chosen) + 1),
                "lead_id": ids[chosen],
                "rep_id": owner[chosen],
                "activity_type": "call",
                "occurred_at": iso(NOW - timedelta(minutes=10)),
                "automated": False,
                "activity_key": [f"bench-{i}" for i in chosen],
                "recorded_at": iso(NOW),
            }
        )
        conn = psycopg2.connect(schema.dsn)
        cursor = conn.cursor()
        cursor.execute(f'SET search_path TO "{schema.name}"')
        copy_frame(cursor, "leads", leads)
        copy_frame(cursor, "assignments", assignments)
        baseline_seconds = copy_frame(cursor, "sla_timers", timers)
        copy_frame(cursor, "activities", activities)
        for table, count in (
            ("leads", total),
            ("assignments", total),
            ("sla_timers", n),
            ("activities", len(activities)),
        ):
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), %s)", (count,))
        conn.commit()
        cursor.execute("ANALYZE")
        conn.commit()
        conn.close()
        del leads, assignments, timers, activities

        started = time.perf_counter()
        warm_up_prefect()
        import great_expectations  # noqa: F401

        from flows.sla import sla

        one_time_seconds = time.perf_counter() - started
        started = time.perf_counter()
        state = sla(
            now=NOW, database_url=schema.url, routing=str(bundled), notifier=None, return_state=True
        )
        seconds = time.perf_counter() - started
        summary = state.result(raise_on_failure=False)
        result = {
            "bench": "sla",
            "open_timers": n,
            "sla_state": state.type.value,
            "check_seconds": round(seconds, 2),
            "check_target_seconds": 10,
            "timers_started": summary.get("timers_started"),
            "timers_met": summary.get("timers_met"),
            "warnings": summary.get("warnings"),
            "level_1": summary.get("level_1"),
            "level_2": summary.get("level_2"),
            "actions": summary.get("actions"),
            "messages_queued": summary.get("messages_queued"),
            "events_emitted": summary.get("events"),
            "check_step_seconds": summary.get("step_seconds"),
            "flow_step_seconds": summary.get("flow_seconds"),
            "baseline_copy_timers_seconds": round(baseline_seconds, 2),
            "ratio_to_copy": round(baseline_seconds / seconds, 3),
            "one_time_imports_seconds_excluded": round(one_time_seconds, 2),
            "peak_rss_mb": peak_rss_mb(),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
