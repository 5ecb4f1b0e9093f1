"""Benchmark: the booking pages under concurrent leads. Page render (``GET /book/<token>``)
and booking (``POST /book/<token>``) latency, against ``GET /healthz`` under the same
concurrency in the same run (the app's floor: routing, the thread pool, HTTP).

The store is made outside the timings: a migrated database (a temporary SQLite file by
default; ``--database-url`` with a PostgreSQL URL works in a throwaway schema, dropped at the
end; any other URL is migrated and used as it is), ``--reps`` reps working 09:00-17:00 on
weekdays in zones around the world, and ``--leads`` leads routed to them round-robin (open
assignments, the lifecycle's ledger) with booking links (``leadflow.booking.store``). The
app (``app.web.create_app`` with the booking core, no CalDAV calendars) is served by uvicorn
on a free loopback port in a thread; its per-address rate limit is off, since every client
here is 127.0.0.1 (the per-link limit stays on).

Then, from ``--concurrency`` client threads (one ``requests`` session each): every lead GETs
its page (timed) and reads the slot buttons and the hidden ``form`` field from the HTML;
then every lead POSTs one slot (timed, redirects not followed: 303 booked, 409 taken). The
leads of one owner see the same slots and pick different ones, except that every
``--clash-every``-th lead of an owner picks the slot its owner's previous lead picked: exactly
one of each such pair books, the other hears 409. Afterwards the database is checked: live
meetings per (rep, start) must be one (``double_booked`` counts those with more). Prints JSON.

    python bench/booking.py --leads 50 --concurrency 50
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Links are signed with these test values, read from the environment by leadflow.links: no
# Public Site block (and no Prefect API) is asked for them.
os.environ["LEADFLOW_PUBLIC_URL"] = "http://127.0.0.1:8080"
os.environ["LEADFLOW_UNSUBSCRIBE_SECRET"] = "bench-booking-signing-secret"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("LEADFLOW_HOME", tempfile.mkdtemp(prefix="bench-booking-home-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import requests

ZONES = (
    "America/New_York",
    "America/Los_Angeles",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
)
COUNTRIES = ("US", "GB", "DE", "JP", "AU", "BR", "IN")
SLOT = re.compile(r'name="slot" value="([^"]+)"')
FORM = re.compile(r'name="form" value="([0-9a-f]{32})"')


def main() -> None:
    """Make the store (setup), serve the app, time the baseline and the leads, print JSON."""
    args = parse_args()
    with database(args.database_url) as url:
        leads = setup(url, args.reps, args.leads)
        with serve(url) as base:
            run = measure(base, leads, args.concurrency, args.clash_every)
        checked = check_store(url)
    print(json.dumps(report(args, run, checked), indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--clash-every",
        type=int,
        default=5,
        help="the 2nd lead of every N of one owner picks its neighbour's slot (0: none)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="default: a temporary SQLite file; a PostgreSQL URL: a throwaway schema in it",
    )
    args = parser.parse_args(argv)
    if args.leads < 1 or args.concurrency < 1 or args.reps < 1:
        parser.error("--leads, --concurrency and --reps must be at least 1")
    return args


# --------------------------------------------------------------------------- the store


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """A migrated database: a temporary SQLite file, a throwaway PostgreSQL schema, or
    ``url`` itself (any other URL)."""
    from leadflow import store

    if url is None:
        with tempfile.TemporaryDirectory(prefix="bench-booking-") as folder:
            sqlite = f"sqlite:///{Path(folder) / 'leadflow.db'}"
            store.upgrade(sqlite)
            try:
                yield sqlite
            finally:
                store.get_engine(sqlite).dispose()
        return
    if url.startswith("postgresql"):
        from bench.common import bench_schema

        with bench_schema(url) as schema:
            try:
                yield schema.url
            finally:
                store.get_engine(schema.url).dispose()
        return
    store.upgrade(url)
    yield url


@dataclass(frozen=True)
class BenchLead:
    id: int
    owner: str  # the rep's code
    position: int  # its place among its owner's leads (0, 1, ...)
    token: str


def insert_reps(conn: Any, count: int, now: datetime) -> list[tuple[int, str]]:
    """``count`` active reps of one pool, 09:00-17:00 on weekdays, in ``ZONES`` in turn."""
    from leadflow import tables as t

    rows = [
        {
            "email": f"rep{i}@bench.example",
            "name": f"Rep{i} Bench",
            "code": f"rep{i}",
            "timezone": ZONES[i % len(ZONES)],
            "working_hours": {"mon-fri": ["09:00-17:00"]},
            "pools": ["bench"],
            "active": True,
            "created_at": now,
        }
        for i in range(count)
    ]
    conn.execute(t.reps.insert(), rows)
    found = conn.execute(t.reps.select().where(t.reps.c.email.like("%@bench.example")))
    return sorted(((int(r.id), r.code) for r in found), key=lambda pair: int(pair[1][3:]))


def setup(url: str, rep_count: int, lead_count: int) -> list[BenchLead]:
    """Outside the timings: the reps, and the leads routed to them round-robin with open
    assignments and booking links (captured -> enriched -> mql -> routed, as the hops do)."""
    from leadflow import lifecycle, store
    from leadflow import tables as t
    from leadflow.booking.rules import BookingRules
    from leadflow.booking.store import create_links

    now = datetime.now(UTC)
    with store.get_engine(url).begin() as conn:
        reps = insert_reps(conn, rep_count, now)
        ids = [int(i) for i in store.allocate_ids(conn, t.leads, lead_count)]
        owners = [reps[n % len(reps)] for n in range(lead_count)]
        leads = pd.DataFrame(
            {
                "id": ids,
                "email": [f"lead{i}@buyer{i}.example" for i in ids],
                "first_name": "Lee",
                "country": [COUNTRIES[n % len(COUNTRIES)] for n in range(lead_count)],
                "source": "bench",
                "captured_at": pd.Timestamp(now),
                "last_seen_at": pd.Timestamp(now),
                "updated_at": pd.Timestamp(now),
            }
        )
        lifecycle.admit(conn, leads, actor="bench", at=now)
        for source, target in (("captured", "enriched"), ("enriched", "mql"), ("mql", "routed")):
            changes = pd.DataFrame({"id": ids, "from_status": source, "to_status": target})
            if target == "routed":
                changes["owner_rep_id"] = [rep_id for rep_id, _ in owners]
            lifecycle.apply(conn, changes, actor="bench", at=now)
        conn.execute(t.assignments.insert(), assignments(ids, owners, now))
        links = create_links(conn, ids, now, BookingRules().link_life)
    seen: Counter[str] = Counter()
    out = []
    for lead_id, (_, code) in zip(ids, owners, strict=True):
        out.append(BenchLead(lead_id, code, seen[code], links[lead_id]))
        seen[code] += 1
    return out


def assignments(ids: list[int], owners: list[tuple[int, str]], now: datetime) -> list[dict]:
    return [
        {
            "lead_id": lead_id,
            "rep_id": rep_id,
            "rep_code": code,
            "step": "rule",
            "pool": "bench",
            "rule": "bench",
            "version": "bench",
            "reason": "benchmark",
            "assigned_at": now,
        }
        for lead_id, (rep_id, code) in zip(ids, owners, strict=True)
    ]


# --------------------------------------------------------------------------- the app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(url: str) -> Iterator[str]:
    """The web app with the booking pages, served by uvicorn in a thread on loopback."""
    import uvicorn

    from app.web import Limits, create_app
    from leadflow.booking.rules import BookingRules
    from leadflow.booking.service import Booking
    from leadflow.calendars import Calendars

    booking = Booking(url, Calendars(None), BookingRules())
    app = create_app(url, limits=Limits(client_rate=0.0), booking=booking)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="bench-booking-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("bench/booking.py: the app did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# --------------------------------------------------------------------------- the clients


@dataclass
class Run:
    """What the clients saw: milliseconds per request, and the outcomes."""

    healthz_ms: list[float] = field(default_factory=list)
    page_ms: list[float] = field(default_factory=list)
    book_ms: list[float] = field(default_factory=list)
    booked: int = 0
    taken: int = 0
    clashes_planned: int = 0
    errors: Counter[str] = field(default_factory=Counter)


_local = threading.local()


def session() -> requests.Session:
    """This client thread's own session (kept-alive connections, as a browser has)."""
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def timed(method: str, url: str, **kwargs: Any) -> tuple[float, requests.Response | None]:
    """The request's wall-clock milliseconds and its response (None when it failed)."""
    started = time.perf_counter()
    try:
        response = session().request(method, url, timeout=60, **kwargs)
    except requests.RequestException:
        response = None
    return (time.perf_counter() - started) * 1000, response


def read_page(base: str, lead: BenchLead) -> tuple[float, list[str], str | None, str]:
    """GET the lead's page: its time, the slot keys offered, the form field, and what went
    wrong ('' when nothing did)."""
    ms, response = timed("GET", f"{base}/book/{lead.token}", allow_redirects=False)
    if response is None:
        return ms, [], None, "page: no answer"
    if response.status_code != 200:
        return ms, [], None, f"page: {response.status_code}"
    slots, form = SLOT.findall(response.text), FORM.search(response.text)
    if not slots or form is None:
        return ms, [], None, "page: no slot or form field"
    return ms, slots, form.group(1), ""


def picks(leads: list[BenchLead], pages: dict[int, list[str]], every: int) -> dict[int, str]:
    """Each lead's slot: its own place in its owner's slots, or, for the 2nd lead of every
    ``every`` of an owner, the slot the owner's previous lead picked (a planned clash)."""
    chosen: dict[int, str] = {}
    by_position = {(lead.owner, lead.position): lead for lead in leads}
    for lead in sorted(leads, key=lambda item: item.position):
        slots = pages.get(lead.id)
        if not slots:
            continue
        previous = by_position.get((lead.owner, lead.position - 1))
        if every and lead.position % every == 1 and previous and previous.id in chosen:
            chosen[lead.id] = chosen[previous.id]
        else:
            chosen[lead.id] = slots[lead.position % len(slots)]
    return chosen


def post_booking(base: str, lead: BenchLead, slot: str, form: str) -> tuple[float, str]:
    """POST the lead's slot: its time and the outcome (booked, taken, or what went wrong)."""
    ms, response = timed(
        "POST",
        f"{base}/book/{lead.token}",
        data={"slot": slot, "form": form, "tz": ""},
        allow_redirects=False,
    )
    if response is None:
        return ms, "book: no answer"
    if response.status_code == 303:
        return ms, "booked"
    if response.status_code == 409:
        return ms, "taken"
    return ms, f"book: {response.status_code}"


def measure(base: str, leads: list[BenchLead], concurrency: int, every: int) -> Run:
    """The baseline (as many ``/healthz`` GETs as leads), then every lead's page, then every
    lead's booking, each phase from ``concurrency`` client threads."""
    run = Run()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        # Warm-up, outside the timings: connections, the engine, the templates.
        list(pool.map(lambda _: timed("GET", f"{base}/healthz"), range(concurrency)))
        read_page(base, leads[0])
        for ms, response in pool.map(lambda _: timed("GET", f"{base}/healthz"), leads):
            run.healthz_ms.append(ms)
            if response is None or response.status_code != 200:
                run.errors["healthz"] += 1
        pages, forms = {}, {}
        for lead, (ms, slots, form, problem) in zip(
            leads, pool.map(lambda lead: read_page(base, lead), leads), strict=True
        ):
            run.page_ms.append(ms)
            if problem:
                run.errors[problem] += 1
            else:
                pages[lead.id], forms[lead.id] = slots, form
        chosen = picks(leads, pages, every)
        run.clashes_planned = len(chosen) - len(set(chosen.values()))
        todo = [lead for lead in leads if lead.id in chosen]
        posted = pool.map(
            lambda lead: post_booking(base, lead, chosen[lead.id], forms[lead.id]), todo
        )
        for ms, outcome in posted:
            run.book_ms.append(ms)
            if outcome == "booked":
                run.booked += 1
            elif outcome == "taken":
                run.taken += 1
            else:
                run.errors[outcome] += 1
    return run


# --------------------------------------------------------------------------- the results


def check_store(url: str) -> dict[str, int]:
    """Live meetings in the database, and (rep, start) pairs and links with more than one."""
    from sqlalchemy import func, select

    from leadflow import store
    from leadflow import tables as t

    m = t.meetings
    live = m.c.status == "booked"
    with store.get_engine(url).connect() as conn:
        meetings = conn.execute(select(func.count()).where(live)).scalar_one()
        pairs = (
            select(m.c.rep_id, m.c.starts_at)
            .where(live)
            .group_by(m.c.rep_id, m.c.starts_at)
            .having(func.count() > 1)
            .subquery()
        )
        twice = (
            select(m.c.link_id).where(live).group_by(m.c.link_id).having(func.count() > 1)
        ).subquery()
        double = conn.execute(select(func.count()).select_from(pairs)).scalar_one()
        links = conn.execute(select(func.count()).select_from(twice)).scalar_one()
    return {
        "meetings_in_db": int(meetings),
        "double_booked": int(double),
        "links_twice": int(links),
    }


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    data = np.asarray(values)
    return {
        "p50": round(float(np.percentile(data, 50)), 1),
        "p95": round(float(np.percentile(data, 95)), 1),
        "max": round(float(data.max()), 1),
    }


def report(args: argparse.Namespace, run: Run, checked: dict[str, int]) -> dict[str, Any]:
    """The JSON document: latencies (ms), outcomes, the database's check, and the p95 of the
    page and of booking over the baseline's."""
    page, book, health = quantiles(run.page_ms), quantiles(run.book_ms), quantiles(run.healthz_ms)
    floor = health["p95"]
    return {
        "leads": args.leads,
        "concurrency": args.concurrency,
        "reps": args.reps,
        "database": (args.database_url or "sqlite").split(":", 1)[0].split("+")[0],
        "page_ms": page,
        "book_ms": book,
        "healthz_ms": health,
        "page_p95_over_healthz": round(page["p95"] / floor, 1) if floor and page["p95"] else None,
        "book_p95_over_healthz": round(book["p95"] / floor, 1) if floor and book["p95"] else None,
        "booked": run.booked,
        "taken": run.taken,
        "clashes_planned": run.clashes_planned,
        # 409s for a slot no other lead picked: the slot left the offer when another slot of
        # that day was booked (the day's slots are re-spread), though it was still free.
        "taken_unplanned": max(0, run.taken - run.clashes_planned),
        "errors": sum(run.errors.values()),
        "error_kinds": dict(run.errors),
        **checked,
    }


if __name__ == "__main__":
    main()
