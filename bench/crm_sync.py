"""Benchmark: the CRM sync of N changed leads to the loopback HubSpot and Salesforce APIs at
their documented limits, against raw ``requests`` writes of the same records.

On a throwaway PostgreSQL schema, ``--leads`` leads go through the lifecycle in bulk with
``LEADFLOW_CRM`` naming the CRMs, so every decision queues its ``crm_sync`` messages as in
production: admitted, enriched (industry, employees), MQL (score, temperature), and two in
three routed to a rep (an assignment with its reason, the owner) who is a user of both CRMs:
2-3 messages per lead per CRM. Then, per CRM, ``leadflow.crm.sync.sync`` is timed until
nothing is due (a run the CRM stops with a rate limit is followed by the next once its
messages are due again, as the deployment's schedule would):

- ``hubspot``: the loopback HubSpot (HTTP) and the adapter both at HubSpot's private-app
  limit for Free/Starter accounts, ``--hubspot-calls-per-10s`` (100 per rolling 10 s): the
  best it allows is 10 calls/s x 100 contacts per batch upsert = 1,000 records/s.
- ``salesforce``: the loopback org (HTTPS) with a daily API budget of ``--sf-daily-max``
  calls and the adapter as shipped (Bulk API 2.0 above 2,000 records a call), then again
  with bulk off (threshold above N; sObject Collections of 200), same claim size. Salesforce
  has no per-second limit: the daily budget bounds a day (budget x 200 records per call),
  the call latency bounds a run, so its best is the raw baseline below.

Each loopback server runs in its own process (the CRM is another machine: its CPU and memory
are not leadflow's). Reported per run: leads, messages, seconds, API calls (the adapter's
count and the server's own log, by endpoint), records per upsert call (per bulk job),
records/s, the theoretical best and the ratio to it, 429s, errors, the sync's peak RSS, and
``all_synced``: the server holds exactly N records (N distinct CRM ids, keys 1..N) and the
outbox holds no unsent message of that CRM. The in-run baseline writes the records the sync
left on the server again, to a fresh server, with one raw ``requests`` call per batch (per
bulk job: its five calls) and no leadflow: no claim, plan, read or record. Prints JSON.

    python bench/crm_sync.py --leads 100000
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import json
import multiprocessing as mp
import os
import pstats
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the loopback CRMs

import numpy as np
import pandas as pd
import requests
from sqlalchemy import Engine, func, select, text

from bench.common import add_database_url, bench_schema, peak_rss_mb

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)
REPS = 40
TOKEN = "pat-bench"
SF_CLIENT = {"client_id": "bench-cid", "client_secret": "bench-secret"}
SF_VERSION = "v60.0"
SF_ID = "Leadflow_Id__c"
HUBSPOT_ID = "leadflow_id"
SERVER_FIELDS = {"hs_object_id", "createdate", "lastmodifieddate", "Id", "CreatedDate"}
SERVER_FIELDS |= {"LastModifiedDate"}


# --------------------------------------------------------------------------- the CRM process


def _serve(kind: str, options: dict[str, Any], pipe: Any) -> None:
    """A loopback CRM in this (child) process, driven by commands over ``pipe``."""
    if kind == "hubspot":
        from loopback.hubspot_api import HubSpotApi

        api: Any = HubSpotApi(**options)
    else:
        from loopback.salesforce_api import SalesforceApi

        api = SalesforceApi(**options)
    with api:
        pipe.send({"url": api.url, "ca_file": getattr(api, "ca_file", None)})
        while True:
            command, args = pipe.recv()
            if command == "stop":
                pipe.send(None)
                return
            with api._lock if kind == "hubspot" else api.lock:
                pipe.send(COMMANDS[command](kind, api, *args))


def _add_users(kind: str, api: Any, emails: list[str]) -> list[str]:
    return [api.add_owner(e) if kind == "hubspot" else api.add_user(e) for e in emails]


def _stats(kind: str, api: Any) -> dict[str, Any]:
    """What the server saw: calls by endpoint, records per write, the records it holds."""
    calls: Counter[str] = Counter()
    records: Counter[str] = Counter()
    for method, path, n in api.calls:
        what = _endpoint(kind, method, path)
        calls[what] += 1
        records[what] += n
    store = api.contacts if kind == "hubspot" else api.leads
    crm_ids = {r["hs_object_id"] if kind == "hubspot" else r["Id"] for r in store.values()}
    out = {
        "calls": sum(calls.values()),
        "by_endpoint": dict(sorted(calls.items())),
        "records_sent": dict(sorted((k, v) for k, v in records.items() if v)),
        "records_held": len(store),
        "distinct_crm_ids": len(crm_ids),
        "keys": sorted(int(k) for k in store),
    }
    if kind == "hubspot":
        out["throttled"] = api.throttled
    else:
        out["daily_usage"] = api.usage
        out["throttled"] = max(0, api.usage - api.daily_max)  # answered REQUEST_LIMIT_EXCEEDED
    return out


def _endpoint(kind: str, method: str, path: str) -> str:
    if kind == "hubspot":
        for tail, name in (
            ("/batch/upsert", "batch_upsert"),
            ("/batch/read", "batch_read"),
            ("/search", "search"),
            ("/owners", "owners"),
            ("/properties", "properties"),
        ):
            if path.rstrip("/").endswith(tail):
                return name
        return f"{method} {path}"
    if "/oauth2/token" in path:
        return "login"
    if "/composite/sobjects/" in path:
        return "collection_upsert"
    if "/jobs/ingest" in path:
        parts = path.split("/jobs/ingest", 1)[1].strip("/").split("/")
        if not parts[0]:
            return "bulk_create_job"
        if len(parts) == 1:
            return {"PATCH": "bulk_close_job", "GET": "bulk_job_state"}.get(method, "bulk")
        return "bulk_upload" if parts[1] == "batches" else "bulk_results"
    if "/query" in path:
        return "soql_query"
    return path.rsplit("/", 1)[-1] or path


def _records(kind: str, api: Any) -> dict[str, dict[str, Any]]:
    """Every record as the client sent it (the server's own fields left out)."""
    store = api.contacts if kind == "hubspot" else api.leads
    return {
        key: {k: v for k, v in values.items() if k not in SERVER_FIELDS and v is not None}
        for key, values in store.items()
    }


def _add_properties(kind: str, api: Any, names: list[str]) -> list[str]:
    """The custom contact properties the mapping writes (``leadflow crm check`` asks a person
    to make them in HubSpot); returns those added."""
    added = [n for n in names if n not in api._properties]
    for name in added:
        api.add_property(name)
    return added


COMMANDS: dict[str, Callable[..., Any]] = {
    "add_users": _add_users,
    "add_properties": _add_properties,
    "stats": _stats,
    "records": _records,
}


class Crm:
    """A loopback CRM in a child process: ``with Crm("hubspot", calls_per_10s=100) as crm``."""

    def __init__(self, kind: str, **options: Any) -> None:
        self.kind, self.options = kind, options

    def __enter__(self) -> Crm:
        context = mp.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(self.kind, self.options, child), daemon=True
        )
        self._process.start()
        hello = self._pipe.recv()
        self.url, self.ca_file = hello["url"], hello["ca_file"]
        return self

    def __call__(self, command: str, *args: Any) -> Any:
        self._pipe.send((command, args))
        return self._pipe.recv()

    def __exit__(self, *exc: object) -> None:
        try:
            self("stop")
        finally:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()


# --------------------------------------------------------------------------- the leads


def make_leads(engine: Engine, count: int, seed: int) -> list[str]:
    """``count`` leads through the lifecycle in bulk (each decision queues its crm_sync
    messages); returns the reps' emails."""

    rng = np.random.default_rng(seed)
    emails = [f"rep{i}@reps.example" for i in range(REPS)]
    rep_ids = _reps(engine, emails)
    ids = _admit(engine, count, rng)
    _decide(engine, ids, rep_ids, rng)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return emails


def _reps(engine: Engine, emails: list[str]) -> list[int]:
    from leadflow import tables as t

    with engine.begin() as conn:
        conn.execute(
            t.reps.insert(),
            [
                {"email": e, "name": f"Rep {i}", "code": f"rep-{i}", "created_at": NOW}
                for i, e in enumerate(emails)
            ],
        )
        return [int(r[0]) for r in conn.execute(select(t.reps.c.id).order_by(t.reps.c.id))]


def _admit(engine: Engine, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` captured leads (their admission queues no sync: no CRM watches capture)."""
    from leadflow import lifecycle, store
    from leadflow import tables as t

    with engine.begin() as conn:
        ids = store.allocate_ids(conn, t.leads, count)
        lifecycle.admit(
            conn,
            pd.DataFrame(
                {
                    "id": ids,
                    "email": [f"lead{i}@company{i % 40000}.example" for i in ids],
                    "first_name": "Lee",
                    "last_name": [f"Buyer{i}" for i in ids],
                    "company": [f"Company {i % 40000}" for i in ids],
                    "title": rng.choice(["VP Sales", "CTO", "Head of Ops", "Analyst"], count),
                    "phone": [f"+1 555 01{i % 100:02d}" for i in ids],
                    "country": rng.choice(["US", "CA", "GB", "DE", "FR", "AU"], count),
                    "source": "Web",
                    "captured_at": pd.Timestamp(NOW),
                    "last_seen_at": pd.Timestamp(NOW),
                    "updated_at": pd.Timestamp(NOW),
                }
            ),
            actor="bench",
            at=NOW,
        )
    return ids


def _decide(engine: Engine, ids: np.ndarray, rep_ids: list[int], rng: np.random.Generator) -> None:
    """Enriched, MQL (scored), then two in three routed: each decision queues crm_sync."""
    from leadflow import lifecycle, store
    from leadflow import tables as t

    count = len(ids)
    steps: list[tuple[str, str, dict[str, Any], np.ndarray]] = [
        (
            "captured",
            "enriched",
            {
                "industry": rng.choice(["Software", "Healthcare", "Retail"], count),
                "employees": rng.integers(1, 20000, count),
            },
            ids,
        ),
        (
            "enriched",
            "mql",
            {
                "score": rng.uniform(60, 100, count).round(2),
                "temperature": rng.choice(["hot", "warm"], count, p=[0.1, 0.9]),
            },
            ids,
        ),
    ]
    routed = ids[np.arange(count) % 3 != 2]  # two in three reach a rep
    owners = np.array(rep_ids)[np.arange(len(routed)) % REPS]
    steps.append(("mql", "routed", {"owner_rep_id": owners}, routed))
    for source, target, columns, who in steps:
        with engine.begin() as conn:
            if target == "routed":
                store.bulk_insert(
                    conn,
                    t.assignments,
                    pd.DataFrame(
                        {
                            "lead_id": who,
                            "rep_id": owners,
                            "rep_code": [f"rep-{r}" for r in owners],
                            "step": "rule",
                            "pool": "na",
                            "rule": "north-america",
                            "version": "bench",
                            "reason": "rule north-america: pool na, round robin",
                            "assigned_at": pd.Timestamp(NOW),
                        }
                    ),
                )
            changes = pd.DataFrame({"id": who, "from_status": source, "to_status": target})
            for name, values in columns.items():
                changes[name] = values
            lifecycle.apply(conn, changes, actor="bench", at=NOW)


def messages(engine: Engine, crm: str) -> dict[str, int]:
    from leadflow import tables as t

    table = t.outbox
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.status, func.count())
            .where(table.c.kind == "crm_sync", table.c.recipient == crm)
            .group_by(table.c.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def requeue(engine: Engine, crm: str) -> None:
    """Every crm_sync message of ``crm`` unsent again and nothing written: a second run of the
    same backlog to a fresh server."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE outbox SET status = 'pending', attempts = 0, last_error = NULL, "
                "sent_at = NULL, claim_token = NULL, lease_until = NULL, failing_since = NULL "
                "WHERE kind = 'crm_sync' AND recipient = :crm"
            ),
            {"crm": crm},
        )
        conn.execute(text("DELETE FROM crm_records WHERE crm = :crm"), {"crm": crm})
        conn.execute(text("ANALYZE outbox"))


# --------------------------------------------------------------------------- measuring


class RssPeak:
    """The process's largest resident set while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> RssPeak:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_sync(
    engine: Engine,
    adapter: Any,
    mapping: Any,
    *,
    claim_size: int | None,
    profile: str | None,
    max_runs: int = 50,
) -> tuple[float, list[Any], float]:
    """``sync`` until nothing of the CRM is due or waiting; (seconds, reports, RSS peak)."""
    from leadflow.crm import sync as crm_sync

    reports = []
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    with RssPeak() as rss:
        for _ in range(max_runs):
            if profiler:
                profiler.enable()
            report = crm_sync.sync(engine, adapter, mapping, claim_size=claim_size)
            if profiler:
                profiler.disable()
            reports.append(report)
            left = messages(engine, mapping.crm)
            if not any(left.get(s) for s in ("pending", "failed", "sending")):
                break
            if report.claimed == 0 or report.error:
                time.sleep(max(_seconds_to_due(engine, mapping.crm), 0.05))
    seconds = time.perf_counter() - started
    if profiler and profile:
        profiler.dump_stats(profile)
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(30)
        print(stream.getvalue(), file=sys.stderr)
    return seconds, reports, rss.peak


def _seconds_to_due(engine: Engine, crm: str) -> float:
    with engine.connect() as conn:
        due = conn.execute(
            text(
                "SELECT min(next_attempt_at) FROM outbox WHERE kind = 'crm_sync' AND "
                "recipient = :crm AND status IN ('pending', 'failed')"
            ),
            {"crm": crm},
        ).scalar()
    return (due - datetime.now(UTC)).total_seconds() if due else 1.0


def summary(
    name: str,
    engine: Engine,
    crm: Crm,
    adapter: Any,
    leads: int,
    queued: int,
    seconds: float,
    reports: list[Any],
    rss: float,
) -> dict[str, Any]:
    server = crm("stats")
    keys = server.pop("keys")
    left = messages(engine, crm.kind)
    unsent = sum(n for status, n in left.items() if status != "sent")
    usage = adapter.usage
    total = {
        k: sum(getattr(r, k) for r in reports)
        for k in ("claimed", "leads", "written", "created", "unchanged", "kept", "failed")
    }
    total |= {"dead": sum(r.dead for r in reports), "deferred": sum(r.deferred for r in reports)}
    all_synced = (
        server["records_held"] == leads
        and server["distinct_crm_ids"] == leads
        and keys == list(range(1, leads + 1))
        and unsent == 0
    )
    return {
        "run": name,
        "leads": leads,
        "messages": queued,
        "seconds": round(seconds, 1),
        "sync_runs": len(reports),
        "api_calls": {"adapter": usage.calls, "server": server["calls"]},
        "calls_by_endpoint": server["by_endpoint"],
        "records_sent_by_endpoint": server["records_sent"],
        "records_per_s": round(leads / seconds, 1),
        "throttled_429": {"adapter": usage.throttled, "server": server["throttled"]},
        "waited_for_limit_s": round(usage.waited_seconds, 1),
        "report": total,
        "errors": [r.error for r in reports if r.error],
        "all_synced": all_synced,
        "records_in_crm": server["records_held"],
        "distinct_crm_ids": server["distinct_crm_ids"],
        "outbox": left,
        "peak_rss_during_sync_mb": round(rss, 1),
        **({"daily_api_usage": server["daily_usage"]} if "daily_usage" in server else {}),
    }


def per_call(run: dict[str, Any], endpoint: str) -> float | None:
    calls = run["calls_by_endpoint"].get(endpoint, 0)
    return round(run["records_sent_by_endpoint"].get(endpoint, 0) / calls, 1) if calls else None


# --------------------------------------------------------------------------- baselines


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def hubspot_baseline(
    records: dict[str, dict[str, Any]], reps: list[str], properties: list[str]
) -> dict[str, Any]:
    """The same contacts, 100 per raw batch upsert, to a fresh loopback HubSpot with its limit
    off (at the limit a raw client is bound by the same 10 calls/s)."""
    items = list(records.items())
    with Crm("hubspot", token=TOKEN, calls_per_10s=10**9) as crm, requests.Session() as http:
        crm("add_users", reps)  # the same owner ids, in the same order
        crm("add_properties", properties)
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        url = f"{crm.url}/crm/v3/objects/contacts/batch/upsert"
        started = time.perf_counter()
        for chunk in _chunks(items, 100):
            body = {
                "inputs": [
                    {"id": key, "idProperty": HUBSPOT_ID, "properties": values}
                    for key, values in chunk
                ]
            }
            answer = http.post(url, json=body, timeout=30)
            if answer.status_code not in (200, 207):
                raise RuntimeError(f"raw HubSpot upsert: {answer.status_code}")
        seconds = time.perf_counter() - started
        held = crm("stats")["records_held"]
    return _baseline(len(items), seconds, held, -(-len(items) // 100), "batch upsert of 100")


def salesforce_login(crm: Crm, http: requests.Session) -> str:
    answer = http.post(
        f"{crm.url}/services/oauth2/token",
        data={"grant_type": "client_credentials", **SF_CLIENT},
        verify=crm.ca_file,
        timeout=30,
    ).json()
    http.headers["Authorization"] = f"Bearer {answer['access_token']}"
    return f"{answer['instance_url']}/services/data/{SF_VERSION}"


def collections_baseline(
    records: dict[str, dict[str, Any]], reps: list[str], daily_max: int
) -> dict[str, Any]:
    """The same Leads, 200 per raw sObject Collections upsert."""
    items = [{"attributes": {"type": "Lead"}, **values} for values in records.values()]
    with Crm("salesforce", daily_max=daily_max, **SF_CLIENT) as crm, requests.Session() as http:
        crm("add_users", reps)  # the same user ids, in the same order
        base = salesforce_login(crm, http)
        started = time.perf_counter()
        for chunk in _chunks(items, 200):
            answer = http.patch(
                f"{base}/composite/sobjects/Lead/{SF_ID}",
                json={"allOrNone": False, "records": chunk},
                verify=crm.ca_file,
                timeout=30,
            )
            if answer.status_code != 200:
                raise RuntimeError(f"raw Salesforce upsert: {answer.status_code}")
        seconds = time.perf_counter() - started
        held = crm("stats")["records_held"]
    calls = -(-len(items) // 200)
    return _baseline(len(items), seconds, held, calls, "sObject Collections upsert of 200")


def bulk_baseline(
    records: dict[str, dict[str, Any]], reps: list[str], daily_max: int, job_size: int
) -> dict[str, Any]:
    """The same Leads in raw Bulk API 2.0 upsert jobs of ``job_size`` records: create, upload
    the CSV, close, read the state (once: the loopback finishes a job when it closes), read
    the successful results."""
    rows = list(records.values())
    columns = sorted({k for r in rows for k in r})
    calls = 0
    with Crm("salesforce", daily_max=daily_max, **SF_CLIENT) as crm, requests.Session() as http:
        crm("add_users", reps)  # the same user ids, in the same order
        base = salesforce_login(crm, http)
        verify = crm.ca_file
        started = time.perf_counter()
        for chunk in _chunks(rows, job_size):
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: _csv(r.get(k)) for k in columns} for r in chunk)
            spec = {"object": "Lead", "operation": "upsert", "externalIdFieldName": SF_ID}
            spec |= {"contentType": "CSV", "lineEnding": "LF"}
            job = http.post(f"{base}/jobs/ingest", json=spec, verify=verify, timeout=30).json()
            jobs = f"{base}/jobs/ingest/{job['id']}"
            http.put(
                f"{jobs}/batches",
                data=out.getvalue().encode(),
                headers={"Content-Type": "text/csv"},
                verify=verify,
                timeout=60,
            )
            http.patch(jobs, json={"state": "UploadComplete"}, verify=verify, timeout=60)
            state = http.get(jobs, verify=verify, timeout=30).json()["state"]
            if state != "JobComplete":
                raise RuntimeError(f"raw bulk job ended {state}")
            http.get(f"{jobs}/successfulResults", verify=verify, timeout=60)
            calls += 5
        seconds = time.perf_counter() - started
        held = crm("stats")["records_held"]
    return _baseline(len(rows), seconds, held, calls, f"Bulk API 2.0 jobs of {job_size}")


def _csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _baseline(records: int, seconds: float, held: int, calls: int, how: str) -> dict[str, Any]:
    return {
        "how": f"raw requests, {how}, no leadflow",
        "records": records,
        "records_in_crm": held,
        "api_calls": calls,
        "seconds": round(seconds, 2),
        "records_per_s": round(records / seconds, 1),
    }


# --------------------------------------------------------------------------- the runs


def bench_hubspot(
    engine: Engine, args: argparse.Namespace, reps: list[str], profile: str | None
) -> dict[str, Any]:
    from leadflow.crm import mapping as crm_mapping
    from leadflow.crm.hubspot import HubSpotAdapter

    limit = args.hubspot_calls_per_10s
    queued = sum(messages(engine, "hubspot").values())
    mapping = crm_mapping.load_mapping("hubspot")[0]
    properties = mapping.properties()
    with Crm("hubspot", token=TOKEN, calls_per_10s=limit) as crm:
        crm("add_users", reps)
        added = crm("add_properties", properties)
        adapter = HubSpotAdapter(access_token=TOKEN, base_url=crm.url, calls_per_10s=limit)
        seconds, reports, rss = run_sync(engine, adapter, mapping, claim_size=None, profile=profile)
        run = summary("hubspot", engine, crm, adapter, args.leads, queued, seconds, reports, rss)
        records = crm("records") if args.baseline else {}
    best = limit / 10 * adapter.batch_size
    run["records_per_upsert_call"] = per_call(run, "batch_upsert")
    run["custom_properties_made_first"] = added
    run["limit"] = (
        f"{limit} calls per rolling 10 s (HubSpot private app, Free/Starter), on the server "
        f"and the adapter; {adapter.batch_size} contacts per batch upsert"
    )
    run["theoretical_best_records_per_s"] = best
    run["theoretical_best_seconds"] = round(args.leads / best, 1)
    run["ratio"] = round(run["records_per_s"] / best, 3)
    if records:
        raw = hubspot_baseline(records, reps, properties)
        raw["at_the_limit_records_per_s"] = min(best, raw["records_per_s"])
        run["baseline"] = raw
    return run


def bench_salesforce(
    engine: Engine,
    args: argparse.Namespace,
    reps: list[str],
    bulk: bool,
    profile: str | None,
) -> dict[str, Any]:
    from leadflow.crm import mapping as crm_mapping
    from leadflow.crm.salesforce import SalesforceAdapter

    queued = sum(messages(engine, "salesforce").values())
    with Crm("salesforce", daily_max=args.sf_daily_max, **SF_CLIENT) as crm:
        crm("add_users", reps)
        adapter = SalesforceAdapter(login_url=crm.url, ca_file=crm.ca_file, **SF_CLIENT)
        # The claim the sync takes with the shipped threshold, in both runs: only the way
        # the records are written differs.
        claim = max(adapter.batch_size * 10, adapter.bulk_threshold * 5)
        if not bulk:
            adapter.bulk_threshold = args.leads + 1
        mapping = crm_mapping.load_mapping("salesforce")[0]
        seconds, reports, rss = run_sync(
            engine, adapter, mapping, claim_size=claim, profile=profile
        )
        name = "salesforce_bulk" if bulk else "salesforce_collections"
        run = summary(name, engine, crm, adapter, args.leads, queued, seconds, reports, rss)
        records = crm("records") if args.baseline else {}
    run["claim_size_messages"] = claim
    run["bulk_threshold"] = adapter.bulk_threshold
    run["daily_api_budget"] = args.sf_daily_max
    calls = run["api_calls"]["server"]
    run["daily_budget_share"] = round(calls / args.sf_daily_max, 4)
    usable = args.sf_daily_max * (1 - adapter.daily_reserve)
    run["leads_per_day_at_this_cost"] = int(usable / (calls / args.leads))
    if bulk:
        jobs = run["calls_by_endpoint"].get("bulk_create_job", 0)
        sent = run["records_sent_by_endpoint"].get("bulk_upload", 0)
        run["bulk_jobs"] = jobs
        run["records_per_bulk_job"] = round(sent / jobs, 1) if jobs else None
        run["records_per_upsert_call"] = per_call(run, "collection_upsert")
    else:
        run["records_per_upsert_call"] = per_call(run, "collection_upsert")
    run["limit"] = (
        f"{args.sf_daily_max:,} API calls per rolling 24 h (the adapter keeps the last "
        f"{adapter.daily_reserve:.0%} for others); no per-second limit"
    )
    run["daily_bound_records_per_day"] = int(usable) * adapter.batch_size
    if records:
        if bulk:
            size = int(run["records_per_bulk_job"] or claim)
            raw = bulk_baseline(records, reps, args.sf_daily_max, size)
        else:
            raw = collections_baseline(records, reps, args.sf_daily_max)
        run["baseline"] = raw
        run["theoretical_best_records_per_s"] = raw["records_per_s"]
        run["theoretical_best_is"] = "the raw baseline: call latency bounds a burst"
        run["ratio"] = round(run["records_per_s"] / raw["records_per_s"], 3)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url(parser)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--crm", default="hubspot,salesforce", help="comma list")
    parser.add_argument("--hubspot-calls-per-10s", type=int, default=100)
    parser.add_argument("--sf-daily-max", type=int, default=15_000)
    parser.add_argument(
        "--sf-modes", default="bulk,collections", help="Salesforce runs: bulk, collections"
    )
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--profile", metavar="PREFIX", help="cProfile each sync to PREFIX-<run>.prof (stderr)"
    )
    args = parser.parse_args()
    crms = [c.strip() for c in args.crm.split(",") if c.strip()]
    os.environ["LEADFLOW_CRM"] = ",".join(crms)

    from leadflow import store

    result: dict[str, Any] = {"bench": "crm_sync", "leads": args.leads, "runs": []}
    with bench_schema(args.database_url) as schema:
        engine = store.get_engine(schema.url)
        started = time.perf_counter()
        reps = make_leads(engine, args.leads, args.seed)
        result["setup_seconds"] = round(time.perf_counter() - started, 1)

        def prof(name: str) -> str | None:
            return f"{args.profile}-{name}.prof" if args.profile else None

        if "hubspot" in crms:
            result["runs"].append(bench_hubspot(engine, args, reps, prof("hubspot")))
        if "salesforce" in crms:
            modes = [m.strip() for m in args.sf_modes.split(",") if m.strip()]
            for i, mode in enumerate(modes):
                if i:
                    requeue(engine, "salesforce")
                result["runs"].append(
                    bench_salesforce(engine, args, reps, mode == "bulk", prof(f"sf-{mode}"))
                )
        engine.dispose()
    result["all_synced"] = all(r["all_synced"] for r in result["runs"])
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
