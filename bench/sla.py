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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import psycopg2

from bench.common import (
    Schema,
    add_database_url,
    bench_schema,
    copy_frame,
    peak_rss_mb,
    warm_up_prefect,
)

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)  # a Monday
COUNTRIES = ["US", "US", "CA", "GB", "DE", "FR", "AU", "JP", "BR"]
REGIONS = {"US": "NA", "CA": "NA", "GB": "EMEA", "DE": "EMEA", "FR": "EMEA", "AU": "APAC",
           "JP": "APAC", "BR": "LATAM"}  # fmt: skip


def iso(values: pd.Series | datetime) -> pd.Series | str:
    if isinstance(values, datetime):
        return values.isoformat()
    return values.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def main() -> None:
    """Load the store (setup, with the baseline COPY), time one check (measure), print JSON."""
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    routing = routing_without_capacity()
    with bench_schema(args.database_url) as schema:
        baseline_seconds = setup(schema, routing, args, rng)
        measured = measure(schema, routing)
        print(json.dumps(report(args.timers, measured, baseline_seconds), indent=2))


def parse_args() -> argparse.Namespace:
    """The store's size and shape, the seed and the database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=1_000_000)
    parser.add_argument("--warn", type=float, default=0.05)
    parser.add_argument("--due", type=float, default=0.04)
    parser.add_argument("--escalate", type=float, default=0.002)
    parser.add_argument("--new", type=int, default=20_000)
    parser.add_argument("--activities", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    add_database_url(parser)
    return parser.parse_args()


def routing_without_capacity() -> Path:
    """The bundled routing rules without capacity limits, so level 2 reassigns rather than
    finding every pool full (a million open leads is far past any rep's max_open)."""
    source = Path(__file__).resolve().parents[1] / "rules" / "routing.yaml"
    bundled = Path(f"/tmp/bench-sla-{os.getpid()}-routing.yaml")
    bundled.write_text(
        "\n".join(
            line
            for line in source.read_text().splitlines()
            if not line.strip().startswith("capacity:")
        )
    )
    return bundled


def setup(
    schema: Schema, routing: Path, args: argparse.Namespace, rng: np.random.Generator
) -> float:
    """Outside the timings: sync the reps, build the store's rows and COPY them in. Returns
    the baseline: the seconds the COPY of the open timers took."""
    from leadflow import store
    from leadflow.routing.store import sync_reps
    from tasks.routing import load_context

    context = load_context.fn(str(routing))
    with store.get_engine(schema.url).begin() as conn:
        rep_ids = sync_reps(conn, context.rules, NOW)
    # Reps who can own a lead in each region (the pools' members).
    pools = [r for r in context.rules.reps if r.pools]
    frames = store_frames(args, rng, [r.id for r in pools], rep_ids)
    return copy_store(schema, frames, timers=args.timers, total=args.timers + args.new)


def store_frames(
    args: argparse.Namespace, rng: np.random.Generator, codes: list[str], rep_ids: dict
) -> dict[str, pd.DataFrame]:
    """The rows to load, by table: routed leads and their assignments (the last ``--new``
    without timers yet), the open timers, and new activities meeting some of them."""
    n, new = args.timers, args.new
    total = n + new
    ids = np.arange(1, total + 1)
    country = rng.choice(COUNTRIES, size=total)
    owner_code = rng.choice(codes, size=total)
    owner = pd.Series(owner_code).map(rep_ids).to_numpy()
    leads = routed_leads(rng, ids, country, owner)
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
    timers = open_timers(args, rng, ids[:n], owner[:n], assigned_at[:n])
    activities = new_activities(rng, min(args.activities, n), n, ids, owner)
    return {
        "leads": leads,
        "assignments": assignments,
        "sla_timers": timers,
        "activities": activities,
    }


def routed_leads(
    rng: np.random.Generator, ids: np.ndarray, country: np.ndarray, owner: np.ndarray
) -> pd.DataFrame:
    """Routed leads with their owners."""
    return pd.DataFrame(
        {
            "id": ids,
            "email": [f"lead{i}@company{i % 40000}.example" for i in ids],
            "first_name": "Lee",
            "company": [f"Company {i % 40000}" for i in ids],
            "country": country,
            "region": [REGIONS[c] for c in country],
            "temperature": rng.choice(["hot", "warm"], size=len(ids), p=[0.1, 0.9]),
            "score": 80.0,
            "status": "routed",
            "owner_rep_id": owner,
            "captured_at": iso(NOW),
            "last_seen_at": iso(NOW),
            "updated_at": iso(NOW),
            "status_changed_at": iso(NOW),
        }
    )


def open_timers(
    args: argparse.Namespace,
    rng: np.random.Generator,
    ids: np.ndarray,
    owner: np.ndarray,
    assigned_at: pd.Series,
) -> pd.DataFrame:
    """Open timers: where each stands relative to NOW (most later, some in the warning window,
    past due or past escalation)."""
    n = len(ids)
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
    return pd.DataFrame(
        {
            "id": ids,
            "lead_id": ids,
            "assignment_id": ids,
            "rep_id": owner,
            "policy": "warm-first-touch",
            "started_at": iso(assigned_at),
            "warn_at": iso(warn),
            "due_at": iso(due),
            "escalate_at": iso(late),
            "level": 0,
            "created_at": iso(NOW),
        }
    )


def new_activities(
    rng: np.random.Generator, count: int, n: int, ids: np.ndarray, owner: np.ndarray
) -> pd.DataFrame:
    """``count`` calls by the owners of leads with open timers, ten minutes ago."""
    chosen = rng.choice(n, size=count, replace=False)
    return pd.DataFrame(
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


def copy_store(
    schema: Schema, frames: dict[str, pd.DataFrame], *, timers: int, total: int
) -> float:
    """COPY the rows in, set the id sequences past them and ANALYZE. Returns the baseline:
    the seconds the COPY of the timers took."""
    conn = psycopg2.connect(schema.dsn)
    cursor = conn.cursor()
    cursor.execute(f'SET search_path TO "{schema.name}"')
    copy_frame(cursor, "leads", frames["leads"])
    copy_frame(cursor, "assignments", frames["assignments"])
    baseline_seconds = copy_frame(cursor, "sla_timers", frames["sla_timers"])
    copy_frame(cursor, "activities", frames["activities"])
    for table, count in (
        ("leads", total),
        ("assignments", total),
        ("sla_timers", timers),
        ("activities", len(frames["activities"])),
    ):
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), %s)", (count,))
    conn.commit()
    cursor.execute("ANALYZE")
    conn.commit()
    conn.close()
    return baseline_seconds


@dataclass(frozen=True)
class Measured:
    """One timed check: its state, seconds and summary, and the one-time costs excluded."""

    state: Any
    seconds: float
    summary: dict[str, Any]
    one_time_seconds: float


def measure(schema: Schema, routing: Path) -> Measured:
    """Time one SLA check (the ``sla`` flow, sending excluded); Prefect's start and the
    imports are timed apart, as one-time costs."""
    started = time.perf_counter()
    warm_up_prefect()
    import great_expectations  # noqa: F401

    from flows.sla import sla

    one_time_seconds = time.perf_counter() - started
    started = time.perf_counter()
    state = sla(
        now=NOW, database_url=schema.url, routing=str(routing), notifier=None, return_state=True
    )
    seconds = time.perf_counter() - started
    return Measured(state, seconds, state.result(raise_on_failure=False), one_time_seconds)


def report(timers: int, measured: Measured, baseline_seconds: float) -> dict[str, Any]:
    """The JSON document: the check's time and counts, the baseline and the ratio."""
    state, seconds, summary = measured.state, measured.seconds, measured.summary
    return {
        "bench": "sla",
        "open_timers": timers,
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
        "one_time_imports_seconds_excluded": round(measured.one_time_seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


if __name__ == "__main__":
    main()
