"""Scoring speed on PostgreSQL: score N enriched leads with M engagement events (read,
compute vectorised, write back set-based, history and ledger included), then a dry-run
rescore of all of them with changed rules.

    python bench/score.py --leads 1000000 --events 5000000

Leads and events are loaded with COPY into a fresh schema outside the timings. Prints JSON.
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
from leadflow.rules.fields import EVENT_TYPES

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def load(dsn: str, schema: str, leads: int, events: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    conn = psycopg2.connect(dsn)
    cursor = conn.cursor()
    cursor.execute(f'SET search_path TO "{schema}"')
    started = time.perf_counter()
    ids = np.arange(1, leads + 1)
    seniority = rng.choice(
        ["C-level", "VP", "Director", "Manager", "Individual contributor", "Student", "Unknown"],
        size=leads,
        p=[0.05, 0.08, 0.12, 0.25, 0.4, 0.03, 0.07],
    )
    forms = rng.choice(
        ["demo_request", "free_trial", "contact_us", "ebook_download", "newsletter"], size=leads
    )
    timelines = rng.choice(["0-3 months", "3-6 months", "6-12 months", "unknown"], size=leads)
    frame = pd.DataFrame(
        {
            "id": ids,
            "email": [f"lead{i}@company{i % 50000}.example" for i in ids],
            "seniority": seniority,
            "email_type": rng.choice(
                ["business", "free", "role", "disposable"], size=leads, p=[0.8, 0.15, 0.04, 0.01]
            ),
            "industry": rng.choice(
                ["Software", "Healthcare", "Retail", "Financial Services", "Energy"], size=leads
            ),
            "employees": rng.integers(1, 20000, size=leads),
            "source": rng.choice(["web_form", "referral", "webinar", "paid_search"], size=leads),
            "attributes": [
                json.dumps({"lead_form": f, "timeline": t})
                for f, t in zip(forms, timelines, strict=True)
            ],
            "status": "enriched",
            "captured_at": NOW.isoformat(),
            "last_seen_at": NOW.isoformat(),
            "updated_at": NOW.isoformat(),
            "status_changed_at": NOW.isoformat(),
        }
    )
    copy_frame(cursor, "leads", frame)
    cursor.execute("SELECT setval(pg_get_serial_sequence('leads', 'id'), %s)", (leads,))
    del frame
    kinds = np.array(EVENT_TYPES)
    pages = np.array(["/pricing", "/product", "/blog/a", "/careers", "/docs"])
    for start in range(0, events, 1_000_000):
        count = min(1_000_000, events - start)
        kind = rng.choice(kinds, size=count, p=[0.45, 0.2, 0.1, 0.05, 0.04, 0.03, 0.01, 0.01, 0.11])
        frame = pd.DataFrame(
            {
                "lead_id": rng.integers(1, leads + 1, size=count),
                "event_type": kind,
                "occurred_at": (
                    pd.Timestamp(NOW) - pd.to_timedelta(rng.uniform(0, 180, size=count), unit="D")
                ).strftime("%Y-%m-%d %H:%M:%S+00"),
                "url": np.where(kind == "page_view", rng.choice(pages, size=count), ""),
                "event_key": [f"bench-{start + i}" for i in range(count)],
                "source": "bench",
            }
        )
        copy_frame(cursor, "engagement_events", frame)
    conn.commit()
    cursor.execute("ANALYZE leads; ANALYZE engagement_events")
    conn.commit()
    conn.close()
    return {"load_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=3)
    add_database_url(parser)
    args = parser.parse_args()

    with bench_schema(args.database_url) as schema:
        schema_url = schema.url
        setup = load(schema.dsn, schema.name, args.leads, args.events, args.seed)
        from flows.score import rescore, score

        warm_up_prefect()
        rules = Path(__file__).resolve().parents[1] / "rules" / "scoring.yaml"
        started = time.perf_counter()
        state = score(now=NOW, rules=str(rules), database_url=schema_url, return_state=True)
        score_seconds = time.perf_counter() - started
        summary = state.result(raise_on_failure=False)
        changed = Path(f"/tmp/{schema.name}-rules.yaml")
        changed.write_text(rules.read_text().replace("mql_threshold: 60", "mql_threshold: 50"))
        started = time.perf_counter()
        dry = rescore(
            rules=str(changed), dry_run=True, now=NOW, database_url=schema_url, return_state=True
        )
        dry_seconds = time.perf_counter() - started
        diff = dry.result(raise_on_failure=False)
        result = {
            "bench": "score",
            "leads": args.leads,
            "events": args.events,
            **setup,
            "score_state": state.type.value,
            "score_seconds": round(score_seconds, 2),
            "score_leads_per_s": round(args.leads / score_seconds),
            "score_target_seconds": 60,
            "scored": summary.get("scored"),
            "to_mql": summary.get("mql"),
            "dry_run_rescore_seconds": round(dry_seconds, 2),
            "dry_run_leads_per_s": round(args.leads / dry_seconds),
            "dry_run_target_seconds": 30,
            "dry_run_new_mql": diff.get("new_mql"),
            "peak_rss_mb": peak_rss_mb(),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
