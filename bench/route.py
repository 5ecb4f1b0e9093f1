"""Routing speed on PostgreSQL: route N MQLs with the bundled rules/routing.yaml, capacity
limits removed so that none waits (claim, read,
route, gate, write statuses, owners, assignments, counters, and one owner notification per
lead queued in the outbox; sending excluded), against a baseline: PostgreSQL's raw COPY of
the same number of assignment-sized rows.

    python bench/route.py --leads 100000

Leads are loaded with COPY into a fresh schema outside the timings. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import psycopg2

from bench.common import add_database_url, bench_schema, copy_frame, peak_rss_mb, warm_up_prefect

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)  # a Monday: most reps are at work
COUNTRIES = ["US", "US", "US", "CA", "GB", "DE", "FR", "NL", "AU", "JP", "SG", "IN", "BR", "MX"]
REGIONS = {
    "US": "NA",
    "CA": "NA",
    "GB": "EMEA",
    "DE": "EMEA",
    "FR": "EMEA",
    "NL": "EMEA",
    "AU": "APAC",
    "JP": "APAC",
    "SG": "APAC",
    "IN": "APAC",
    "BR": "LATAM",
    "MX": "LATAM",
}


def mql_frame(leads: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = np.arange(1, leads + 1)
    country = rng.choice(COUNTRIES, size=leads)
    return pd.DataFrame(
        {
            "id": ids,
            "email": [f"lead{i}@company{i % 40000}.example" for i in ids],
            "first_name": "Lee",
            "last_name": [f"Buyer{i}" for i in ids],
            "company": [f"Company {i % 40000}" for i in ids],
            "country": country,
            "region": [REGIONS[c] for c in country],
            "industry": rng.choice(
                ["Software", "Healthcare", "Retail", "Financial Services"], size=leads
            ),
            "employees": rng.integers(1, 20000, size=leads),
            "score": rng.uniform(60, 100, size=leads).round(2),
            "temperature": rng.choice(["hot", "warm"], size=leads, p=[0.05, 0.95]),
            "status": "mql",
            "captured_at": NOW.isoformat(),
            "last_seen_at": NOW.isoformat(),
            "updated_at": NOW.isoformat(),
            "status_changed_at": NOW.isoformat(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=5)
    add_database_url(parser)
    args = parser.parse_args()

    with bench_schema(args.database_url) as schema:
        frame = mql_frame(args.leads, args.seed)
        conn = psycopg2.connect(schema.dsn)
        cursor = conn.cursor()
        cursor.execute(f'SET search_path TO "{schema.name}"')
        copy_frame(cursor, "leads", frame)
        cursor.execute("SELECT setval(pg_get_serial_sequence('leads', 'id'), %s)", (args.leads,))
        # Baseline: raw COPY of as many rows of the assignments' width, into a bare table.
        cursor.execute(
            "CREATE TABLE baseline (lead_id bigint, rep_code text, step text, pool text, "
            "rule text, version text, reason text, candidates text, assigned_at timestamptz)"
        )
        baseline = pd.DataFrame(
            {
                "lead_id": frame["id"],
                "rep_code": "ava-ng",
                "step": "rule",
                "pool": "na-com",
                "rule": "na-commercial",
                "version": "0123456789ab",
                "reason": "rule na-commercial → pool na-com, 3rd of 5 by weight",
                "candidates": '{"ava-ng": "assigned", "ben-ortiz": "at capacity"}',
                "assigned_at": NOW.isoformat(),
            }
        )
        baseline_seconds = copy_frame(cursor, "baseline", baseline)
        conn.commit()
        cursor.execute("ANALYZE leads")
        conn.commit()
        conn.close()
        del frame, baseline

        # One-time costs a running worker has already paid: Prefect's client, GX's import.
        started = time.perf_counter()
        warm_up_prefect()
        import great_expectations  # noqa: F401

        from flows.route import route

        one_time_seconds = time.perf_counter() - started
        # The bundled rules without capacity limits: every lead is routed (none waits).
        bundled = Path(__file__).resolve().parents[1] / "rules" / "routing.yaml"
        rules = Path(f"/tmp/{schema.name}-routing.yaml")
        rules.write_text(
            "\n".join(
                line
                for line in bundled.read_text().splitlines()
                if not line.strip().startswith("capacity:")
            )
        )
        started = time.perf_counter()
        state = route(now=NOW, database_url=schema.url, rules=str(rules), return_state=True)
        seconds = time.perf_counter() - started
        summary = state.result(raise_on_failure=False)
        result = {
            "bench": "route",
            "leads": args.leads,
            "route_state": state.type.value,
            "route_seconds": round(seconds, 2),
            "route_leads_per_s": round(args.leads / seconds),
            "route_target_seconds": 10,
            "routed": summary.get("routed"),
            "waiting": summary.get("waiting"),
            "notifications_queued": summary.get("queued"),
            "baseline_copy_seconds": round(baseline_seconds, 2),
            "baseline_rows_per_s": round(args.leads / baseline_seconds),
            "ratio_to_copy": round(baseline_seconds / seconds, 3),
            "one_time_imports_seconds_excluded": round(one_time_seconds, 2),
            "peak_rss_mb": peak_rss_mb(),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
