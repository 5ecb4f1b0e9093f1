"""Sales-activity ingest against lead ingest and PostgreSQL's raw COPY, in the same run.

    python bench/activities.py --records 200000

Outside the timings, in a fresh schema: N routed leads with their assignments (COPY), and a
CRM export of N activities with vendor spellings ("Logged Call", "Email Sent", "Accepted",
"Meeting Scheduled"; one lead in ten accepted, so a tenth are dispositions moving a lead).
Timed: (1) `leadflow ingest --target activities` of that export (map, normalise, find lead and
rep, ownership, the lifecycle walk, gate, write activities + raw records + the accepted
leads' transitions); (2) `leadflow ingest` of an N-record leads file into a second fresh
schema; (3) PostgreSQL's COPY of the activities file into a table of text columns. Prints
JSON with the rates and ratios, and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)
KINDS = ["Logged Call", "Email Sent", "Meeting Scheduled", "Accepted"]


def ingest(url: str, path: Path, mapping: Path | None, target: str) -> tuple[float, dict]:
    from flows.capture import capture

    started = time.perf_counter()
    state = capture(
        str(path),
        source="crm",
        mapping_path=str(mapping) if mapping else None,
        now=NOW + timedelta(days=1),
        database_url=url,
        target=target,
        return_state=True,
    )
    seconds = time.perf_counter() - started
    if not state.is_completed():
        raise SystemExit(f"{target} ingest failed: {state.message}")
    return seconds, state.result()


def main() -> None:
    """Write the files and load the leads (setup), time the activities ingest, the baseline
    COPY and the leads ingest, print JSON (report)."""
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.records

    from tasks.routing import load_context

    work = Path(tempfile.mkdtemp(prefix="bench-activities-"))
    context = load_context.fn(None)
    files = write_files(work, context, n, args.seed, rng)
    result: dict = {"records": n}
    with bench_schema(args.database_url) as schema:
        conn, cursor = setup(schema, context, files, n)
        result["activities"] = measure_activities(schema, files, n)
        result["copy"] = baseline(conn, cursor, files, n)
        conn.close()
    with bench_schema(args.database_url) as schema:
        result["leads"] = measure_leads(schema, files, n)
    print(json.dumps(report(result), indent=2))


def parse_args() -> argparse.Namespace:
    """How many records, the seed and the database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    add_database_url(parser)
    return parser.parse_args()


@dataclass(frozen=True)
class Files:
    """What the bench ingests, and the leads the activities belong to."""

    mapping: Path  # the demo's CRM export mapping
    activities: Path
    export: pd.DataFrame  # the activities as written (kept, as the bench always has)
    leads: Path
    emails: list[str]  # the activities' leads, by id
    owner_code: np.ndarray  # each of those leads' owner (a rep code)


def write_files(work: Path, context: Any, n: int, seed: int, rng: np.random.Generator) -> Files:
    """Write the CRM export of ``n`` activities (one per lead, shuffled; a tenth accept their
    lead), its mapping, and an ``n``-record leads file."""
    from app.demo_steps import ACTIVITY_MAPPING

    mapping = work / "crm.yaml"
    mapping.write_text(ACTIVITY_MAPPING)
    reps = [r for r in context.rules.reps if r.pools]
    ids = np.arange(1, n + 1)
    owner_code = rng.choice([r.id for r in reps], size=n)
    rep_email = {r.id: r.email for r in reps}
    emails = [f"lead{i}@company{i % 40000}.example" for i in ids]
    kind = rng.choice(KINDS, size=n, p=[0.5, 0.3, 0.1, 0.1])
    minutes = rng.integers(1, 600, size=n)
    export = pd.DataFrame(
        {
            "Activity ID": [f"ACT-{i}" for i in ids],
            "Lead Email": emails,
            "Assigned To": [rep_email[c] for c in owner_code],
            "Type": kind,
            "Date": [
                (NOW + timedelta(minutes=int(m))).strftime("%Y-%m-%d %H:%M:%S") for m in minutes
            ],
            "Notes": "",
        }
    ).sample(frac=1.0, random_state=seed)
    activities_csv = work / "activities.csv"
    export.to_csv(activities_csv, index=False)
    leads_csv = work / "leads.csv"
    pd.DataFrame(
        {
            "email": [f"new{i}@firm{i % 40000}.example" for i in ids],
            "first_name": "Lee",
            "last_name": [f"Buyer{i}" for i in ids],
            "company": [f"Firm {i % 40000}" for i in ids],
            "title": rng.choice(["VP Sales", "Engineer", "CTO", "Analyst"], size=n),
            "country": rng.choice(["US", "GB", "DE", "FR"], size=n),
        }
    ).to_csv(leads_csv, index=False)
    return Files(mapping, activities_csv, export, leads_csv, emails, owner_code)


def setup(schema: Schema, context: Any, files: Files, n: int) -> tuple[Any, Any]:
    """Outside the timings: sync the reps and COPY in the routed leads the activities belong
    to, with their assignments. Returns the connection and cursor (the baseline uses them)."""
    from leadflow import store
    from leadflow.routing.store import sync_reps

    with store.get_engine(schema.url).begin() as conn:
        rep_ids = sync_reps(conn, context.rules, NOW)
    ids = np.arange(1, n + 1)
    owner = pd.Series(files.owner_code).map(rep_ids).to_numpy()
    stamp = NOW.isoformat()
    conn = psycopg2.connect(schema.dsn)
    cursor = conn.cursor()
    cursor.execute(f'SET search_path TO "{schema.name}"')
    copy_frame(
        cursor,
        "leads",
        pd.DataFrame(
            {
                "id": ids,
                "email": files.emails,
                "status": "routed",
                "owner_rep_id": owner,
                "temperature": "warm",
                "captured_at": stamp,
                "last_seen_at": stamp,
                "updated_at": stamp,
                "status_changed_at": stamp,
            }
        ),
    )
    copy_frame(
        cursor,
        "assignments",
        pd.DataFrame(
            {
                "id": ids,
                "lead_id": ids,
                "rep_id": owner,
                "rep_code": files.owner_code,
                "step": "rule",
                "version": "bench",
                "reason": "bench",
                "assigned_at": stamp,
            }
        ),
    )
    for table in ("leads", "assignments"):
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), %s)", (n,))
    cursor.execute("ANALYZE")
    conn.commit()
    return conn, cursor


def measure_activities(schema: Schema, files: Files, n: int) -> dict[str, Any]:
    """Time ``leadflow ingest --target activities`` of the export (Prefect started first,
    outside the timing)."""
    warm_up_prefect()
    import great_expectations  # noqa: F401

    seconds, summary = ingest(schema.url, files.activities, files.mapping, "activities")
    return {
        "seconds": round(seconds, 1),
        "per_second": round(n / seconds),
        "inserted": summary["inserted"],
        "quarantined": summary["quarantined"],
        "effects": summary.get("effects", {}),
    }


def baseline(conn: Any, cursor: Any, files: Files, n: int) -> dict[str, Any]:
    """The baseline: PostgreSQL's COPY of the same file into a table of text columns."""
    columns = ", ".join(f'"{c}" text' for c in files.export.columns)
    cursor.execute(f"CREATE TABLE baseline_activities ({columns})")
    started = time.perf_counter()
    with files.activities.open(encoding="utf-8") as handle:
        cursor.copy_expert(
            "COPY baseline_activities FROM STDIN WITH (FORMAT csv, HEADER true)", handle
        )
    conn.commit()
    copy_seconds = time.perf_counter() - started
    return {"seconds": round(copy_seconds, 2), "per_second": round(n / copy_seconds)}


def measure_leads(schema: Schema, files: Files, n: int) -> dict[str, Any]:
    """Time ``leadflow ingest`` of the ``n``-record leads file (into a fresh schema)."""
    seconds, summary = ingest(schema.url, files.leads, None, "leads")
    return {
        "seconds": round(seconds, 1),
        "per_second": round(n / seconds),
        "inserted": summary["inserted"],
    }


def report(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: the three measures, the ratios and the peak RSS."""
    result["activities_vs_leads"] = round(
        result["activities"]["per_second"] / result["leads"]["per_second"], 2
    )
    result["activities_vs_copy"] = round(
        result["activities"]["per_second"] / result["copy"]["per_second"], 3
    )
    result["peak_rss_mb"] = peak_rss_mb()
    return result


if __name__ == "__main__":
    main()
