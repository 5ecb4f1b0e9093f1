"""Benchmark: speed to lead. From ``POST /leads`` to the owner's email in an SMTP inbox.

Starts, on loopback: a real ``prefect server start`` (own PREFECT_HOME), an SMTP server
(aiosmtpd, from the test extra), the lane's task worker (``leadflow lane``) and
``leadflow serve --lane worker``, all on a throwaway PostgreSQL schema. The SMTP notifier
and the capture token are created the way an operator would, with ``leadflow blocks init``.
Routing capacity is lifted in a copy of the rules (this measures latency, not capacity).

Then posts ``--single`` leads one by one (each waits for its email before the next) and
``--burst`` leads at once from 64 client threads, and reports, per phase, post -> email
received (p50, p95, max) and, as the in-run baseline, post -> 202 (capture alone). The
other baseline is the scheduled pipeline the lane short-cuts: every 15 minutes, so 450 s
on average.

With ``--load-leads N``, a third phase: N generated leads are ingested, then a
``leadflow run`` process enriches, scores and routes them while single leads are
posted one by one, until it ends (speed to lead on a busy host).

Each phase also says where the time goes, per lead, from the ledger's wall-clock times:
post -> captured (the capture write), captured -> enriched (lane pickup and enrichment),
enriched -> mql (scoring), mql -> routed (routing, including any wait for the routing
lock) and routed -> received (the outbox send, SMTP included). Prints JSON.

    python bench/speed_to_lead.py --single 200 --burst 1000 --load-leads 100000
"""

from __future__ import annotations

import argparse
import email
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_database_url, bench_schema, peak_rss_mb

from app.devstack import bin_path, free_port, prefect_server, wait_for

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-capture-token"
LEAD_NO = re.compile(r"Lead #(\d+)")


class Inbox:
    """An aiosmtpd handler: when each lead's email arrived (monotonic clock)."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self.arrived_wall: dict[int, float] = {}  # the same moments, wall clock (UTC epoch)
        self.changed = threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        at = time.monotonic()
        message = email.message_from_bytes(envelope.original_content or envelope.content)
        body = message.get_payload(decode=True) or b""
        found = LEAD_NO.search(body.decode("utf-8", errors="replace"))
        if found:
            with self.changed:
                self.arrived.setdefault(int(found.group(1)), at)
                self.arrived_wall.setdefault(int(found.group(1)), time.time())
                self.changed.notify_all()
        return "250 OK"

    def wait(self, lead_ids: set[int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not lead_ids <= self.arrived.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True


def lift_capacity(folder: Path) -> Path:
    rules = folder / "rules"
    shutil.copytree(ROOT / "rules", rules)
    routing = rules / "routing.yaml"
    text = re.sub(r"max_open: \d+", "max_open: 1000000", routing.read_text())
    routing.write_text(re.sub(r"max_new_per_day: \d+", "max_new_per_day: 1000000", text))
    return rules


def form(n: int, run: str) -> dict[str, str]:
    return {
        "email": f"lead{n}.{run}@bench-{n % 97}.example.com",
        "first_name": f"Lead{n}",
        "last_name": "Bench",
        "company": f"Bench {n % 97} Corp",
        "title": "VP Sales",
        "country": "US",
        "source": "referral",
        "lead_form": "demo_request",
        "timeline": "0-3 months",
    }


def quantiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50_s": None, "p95_s": None, "max_s": None}
    array = np.array(values)
    return {
        "n": len(values),
        "p50_s": round(float(np.percentile(array, 50)), 3),
        "p95_s": round(float(np.percentile(array, 95)), 3),
        "max_s": round(float(array.max()), 3),
    }


# lead id -> (phase, wall-clock time of its post), for the stage breakdown
POSTED: dict[int, tuple[str, float]] = {}


def post(
    session: requests.Session, url: str, fields: dict[str, str], phase: str = "warm"
) -> tuple[int, float, float]:
    wall = time.time()
    started = time.monotonic()
    answer = session.post(url, json=fields, headers={"Authorization": f"Bearer {TOKEN}"})
    answered = time.monotonic()
    if answer.status_code != 202:
        raise RuntimeError(f"POST /leads answered {answer.status_code}: {answer.text[:300]}")
    lead = int(answer.json()["lead_id"])
    POSTED[lead] = (phase, wall)
    return lead, started, answered


def main() -> None:
    """Start the SMTP server and the stack (setup), time single posts and a burst (measure),
    read the lane's runs, add the baseline, print JSON; the schema and logs go unless
    ``--keep``."""
    args = parse_args()

    from aiosmtpd.controller import Controller

    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    folder = Path(tempfile.mkdtemp(prefix="leadflow-speed-"))
    result: dict = {"single": args.single, "burst": args.burst}
    try:
        with (
            bench_schema(args.database_url, keep=args.keep) as schema,
            prefect_server(folder, stack_env(folder, schema.url, smtp.port)) as stack,
        ):
            url, session = setup(stack, inbox)
            result.update(measure_single(session, url, inbox, args.single, args.timeout))
            result.update(measure_burst(url, inbox, args.burst, args.timeout))
            if args.load_leads:
                result.update(measure_under_load(stack, session, url, inbox, args))
            result["stages"] = stage_breakdown(schema.url, POSTED, inbox)
            result.update(lane_runs(stack.log("lane")))
            result.update(baseline())
    finally:
        smtp.stop()
        if args.keep:
            print(f"kept: schema {schema.name}, logs in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result, indent=2))


def parse_args() -> argparse.Namespace:
    """How many single and burst posts, how long to wait for mail, keep, the database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for mail")
    parser.add_argument("--keep", action="store_true", help="keep the schema and the logs")
    parser.add_argument(
        "--load-leads",
        type=int,
        default=0,
        help="also post single leads while a pipeline run works through this many leads",
    )
    add_database_url(parser)
    return parser.parse_args()


def stack_env(folder: Path, database_url: str, smtp_port: int) -> dict[str, str]:
    """The leadflow settings of the stack: the schema, rules without capacity limits, and
    the capture token and SMTP server (for ``blocks init`` to store)."""
    return {
        "LEADFLOW_HOME": str(folder),
        "LEADFLOW_DATABASE_URL": database_url,
        "LEADFLOW_RULES_DIR": str(lift_capacity(folder)),
        "LEADFLOW_CAPTURE_TOKEN": TOKEN,
        "LEADFLOW_SMTP_HOST": "127.0.0.1",
        "LEADFLOW_SMTP_PORT": str(smtp_port),
        "LEADFLOW_SMTP_STARTTLS": "false",
        "LEADFLOW_SMTP_FROM": "leadflow@bench.example",
    }


def setup(stack: Any, inbox: Inbox) -> tuple[str, requests.Session]:
    """Create the blocks the way an operator would, start the lane's worker and ``leadflow
    serve``, and wait until three warm-up leads are emailed. Returns the capture URL and the
    warmed-up session."""
    leadflow = bin_path("leadflow")
    subprocess.run([leadflow, "blocks", "init"], env=stack.env, check=True, capture_output=True)
    stack.env["LEADFLOW_NOTIFIER"] = "block:leadflow-smtp"
    for name in ("LEADFLOW_CAPTURE_TOKEN", "LEADFLOW_SMTP_HOST"):
        stack.env.pop(name)  # from here on, only the blocks hold them
    stack.start("lane", [leadflow, "lane", "--limit", "4"])
    port = free_port()
    log = stack.start("serve", [leadflow, "serve", "--port", str(port), "--lane", "worker"])
    base = f"http://127.0.0.1:{port}"
    wait_for(f"{base}/healthz", 60, "leadflow serve", log)
    url = f"{base}/leads"
    session = requests.Session()
    warm = {post(session, url, form(n, "warm"))[0] for n in range(3)}
    if not inbox.wait(warm, 120):
        raise RuntimeError("warm-up leads were not emailed:\n" + stack.log("lane"))
    return url, session


def measure_single(
    session: requests.Session, url: str, inbox: Inbox, count: int, timeout: float
) -> dict[str, Any]:
    """Post ``count`` leads one by one, each waiting for its email: post -> email, and the
    in-run baseline post -> 202."""
    single, accepted = [], []
    for n in range(count):
        lead, started, answered = post(session, url, form(n, "single"), "single")
        accepted.append(answered - started)
        if inbox.wait({lead}, timeout):
            single.append(inbox.arrived[lead] - started)
    return {
        "single_post_to_email": quantiles(single),
        "single_post_to_202": quantiles(accepted),
        "single_missing": count - len(single),
    }


def measure_burst(url: str, inbox: Inbox, count: int, timeout: float) -> dict[str, Any]:
    """Post ``count`` leads at once from 64 client threads: how long posting took, post ->
    email, and the in-run baseline post -> 202."""
    burst_started: dict[int, float] = {}
    burst_accepted: list[float] = []
    clock = time.monotonic()

    def one(n: int) -> None:
        """Post lead ``n`` on a session of its own; note when it started and how long 202 took."""
        with requests.Session() as own:
            lead, started, answered = post(own, url, form(n, "burst"), "burst")
        burst_started[lead] = started
        burst_accepted.append(answered - started)

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(one, range(count)))
    posting = round(time.monotonic() - clock, 3)
    inbox.wait(set(burst_started), timeout)
    burst = [
        inbox.arrived[lead] - started
        for lead, started in burst_started.items()
        if lead in inbox.arrived
    ]
    return {
        "burst_posting_s": posting,
        "burst_post_to_email": quantiles(burst),
        "burst_post_to_202": quantiles(burst_accepted),
        "burst_missing": count - len(burst),
    }


def measure_under_load(
    stack: Any, session: requests.Session, url: str, inbox: Inbox, args: argparse.Namespace
) -> dict[str, Any]:
    """Ingest ``--load-leads`` generated leads, start ``leadflow run`` on them as a
    process, and post single leads one by one (each waiting for its email) until it ends."""
    leadflow = bin_path("leadflow")
    sample = stack.folder / "load"
    for argv in (
        [leadflow, "generate", "--leads", str(args.load_leads), "--out", str(sample)],
        [leadflow, "ingest", str(sample / "leads.csv"), "--source", "load"],
    ):
        subprocess.run(argv, env=stack.env, check=True, capture_output=True)
    started = time.monotonic()
    stack.start("pipeline", [leadflow, "run"])
    pipeline = stack.process("pipeline")
    times, accepted, missing, n = [], [], 0, 0
    while pipeline.poll() is None:
        lead, posted, answered = post(session, url, form(n, "load"), "load")
        accepted.append(answered - posted)
        if inbox.wait({lead}, args.timeout):
            times.append(inbox.arrived[lead] - posted)
        else:
            missing += 1
        n += 1
    if pipeline.returncode != 0:
        raise RuntimeError("the load pipeline failed:\n" + stack.log("pipeline")[-3000:])
    return {
        "load_leads": args.load_leads,
        "load_pipeline_s": round(time.monotonic() - started, 1),
        "load_post_to_email": quantiles(times),
        "load_post_to_202": quantiles(accepted),
        "load_missing": missing,
    }


STAGES = (
    ("capture_write", None, "captured"),
    ("lane_pickup_and_enrich", "captured", "enriched"),
    ("score", "enriched", "mql"),
    ("route", "mql", "routed"),
    ("outbox_send", "routed", "received"),  # the send, SMTP included (sent_at follows its 250)
)


def stage_breakdown(
    database_url: str, posted: dict[int, tuple[str, float]], inbox: Inbox
) -> dict[str, Any]:
    """Per phase and stage, p50/p95 seconds from the ledger's wall-clock ``recorded_at``
    of each transition and the inbox's arrival."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        moves = conn.execute(
            text(
                "SELECT lead_id, to_status, MIN(recorded_at) FROM lead_events "
                "WHERE kind = 'transition' AND lead_id = ANY(:ids) GROUP BY lead_id, to_status"
            ),
            {"ids": list(posted)},
        ).all()
    engine.dispose()
    at: dict[int, dict[str | None, float]] = {
        lead: {None: wall} for lead, (_, wall) in posted.items()
    }
    for lead, status, when in moves:
        at[lead][status] = when.timestamp()
    for lead, wall in inbox.arrived_wall.items():
        if lead in at:
            at[lead]["received"] = wall
    phases: dict[str, Any] = {}
    for phase in sorted({p for p, _ in posted.values()} - {"warm"}):
        leads = [lead for lead, (p, _) in posted.items() if p == phase]
        phases[phase] = {
            name: quantiles(
                [at[lead][b] - at[lead][a] for lead in leads if a in at[lead] and b in at[lead]]
            )
            for name, a, b in STAGES
        }
    return phases


def lane_runs(lane_log: str) -> dict[str, int]:
    """From the lane worker's log: its task runs, those that found leads, the largest."""
    runs = [int(n) for n in re.findall(r"lane: (\d+) lead", lane_log)]
    return {
        "lane_task_runs": len(runs),
        "lane_runs_that_did_work": sum(1 for n in runs if n),
        "largest_lane_run_leads": max(runs, default=0),
    }


def baseline() -> dict[str, int]:
    """The other baseline: the scheduled pipeline the lane short-cuts runs every 15 minutes,
    so a lead waits 450 s on average."""
    return {"baseline_pipeline_interval_mean_s": 450}


if __name__ == "__main__":
    main()
