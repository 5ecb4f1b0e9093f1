"""The demo's own steps: sample data and reference data in place, the closing report."""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import func, select

from app.generate import generate
from leadflow import audit, store
from leadflow import tables as t
from leadflow.routing import reference
from leadflow.settings import get_settings


@task(name="prepare-sample", cache_policy=NO_CACHE)
def prepare_sample(leads: int, seed: int) -> dict[str, Any]:
    """Migrate the embedded database, generate sample data once per (size, seed), and load
    its reps and accounts. Returns where everything is."""
    settings = get_settings()
    revision = store.upgrade(settings.database_url)
    sample = settings.var_dir / "sample" / f"{leads}-seed{seed}"
    if not (sample / "leads.csv").exists():
        generate(sample, leads=leads, seed=seed)
    with store.get_engine(settings.database_url).begin() as conn:
        reps = reference.load(conn, "reps", sample / "reps.csv")
        accounts = reference.load(conn, "accounts", sample / "accounts.csv")
    url = settings.database_url
    return {
        "database": url.split("///")[-1] if url.startswith("sqlite") else "postgresql",
        "revision": revision,
        "sample": str(sample),
        "reference": {"reps": reps, "accounts": accounts},
        "mail": str(settings.var_dir / "mail"),
    }


@task(name="ledger-report", cache_policy=NO_CACHE)
def ledger_report() -> dict[str, Any]:
    """The audit and the lead counts by status, for the closing summary."""
    settings = get_settings()
    with store.get_engine(settings.database_url).connect() as conn:
        report = audit.run_audit(conn)
        counts = audit.status_counts(conn)
    return {
        "audit": report.as_dict(),
        "status_counts": counts,
        "data_docs": str(settings.data_docs_dir / "index.html"),
    }


def sample_file(summary: dict[str, Any], name: str) -> str:
    return str(Path(summary["sample"]) / name)


def describe(summary: dict[str, Any]) -> str:
    """The short summary `make run` prints."""
    if not summary or "capture" not in summary:
        return f"demo did not finish: {summary.get('error', summary)}"
    cap = summary["capture"] or {}
    lines = [
        f"database: {summary['database']} (revision {summary['revision']})",
        f"sample data: {summary['sample']}",
        f"capture: received {cap.get('received', 0)}, inserted {cap.get('inserted', 0)}, "
        f"merged {cap.get('merged', 0)}, quarantined {cap.get('quarantined', 0)}"
        + (" (same files as before: no-op)" if cap.get("duplicates") else ""),
    ]
    for step in ("events",):
        if step in summary and isinstance(summary[step], dict):
            data = summary[step]
            lines.append(
                f"{step}: received {data.get('received', 0)}, inserted {data.get('inserted', 0)}, "
                f"merged {data.get('merged', 0)}, quarantined {data.get('quarantined', 0)}"
            )
    pipe = summary.get("pipeline") or {}
    for hop, data in (pipe.get("hops") or {}).items():
        shown = {
            k: v
            for k, v in (data or {}).items()
            if isinstance(v, int | float | str) and k != "seconds"
        }
        lines.append(f"{hop}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    route = (pipe.get("hops") or {}).get("route") or {}
    if route.get("per_rep"):
        lines.append(
            "routed per rep: " + ", ".join(f"{k} {v}" for k, v in route["per_rep"].items())
        )
    sent = route.get("notifications") or {}
    if sent:
        lines.append(
            f"notifications (owners, and leads' booking links): sent {sent.get('sent', 0)}, "
            f"failed {sent.get('failed', 0)}"
            f" (mail in {summary.get('mail')})"
        )
    kpi = summary.get("kpi") or {}
    if isinstance(kpi, dict) and kpi.get("speed_to_lead"):
        speed = kpi["speed_to_lead"]["capture_to_routed"]
        lines.append(
            f"speed to lead: capture -> routed median {speed['median_s']} s, p90 "
            f"{speed['p90_s']} s ({speed['leads']} leads); KPI charts in "
            f"{Path(kpi['charts']['funnel']).parent}"
        )
    if isinstance(summary.get("booking"), dict):
        from app.demo_booking import describe_booking

        lines.extend(describe_booking(summary["booking"]))
    if isinstance(summary.get("sales_week"), dict):
        lines.extend(describe_sales_week(summary["sales_week"]))
    if isinstance(summary.get("month"), dict):
        lines.extend(describe_month(summary["month"]))
    counts = summary.get("status_counts", {})
    lines.append("leads by status: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    report = summary.get("audit", {})
    lines.append(
        f"ledger audit: {'OK' if report.get('ok') else 'BROKEN'} "
        f"(received {report.get('received')} = inserted {report.get('inserted')} + merged "
        f"{report.get('merged')} + quarantined {report.get('quarantined')})"
    )
    lines.append(f"data docs: {summary.get('data_docs')}")
    lines.append(f"time taken: {summary.get('seconds')} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- a sales week

# The demo's CRM export of activities: vendor column names and spellings.
ACTIVITY_MAPPING = """\
source: demo-crm
target: activities
columns:
  Activity ID: activity_id
  Lead Email: email
  Assigned To: rep
  Type: activity_type
  Date: occurred_at
  Notes: reason
required: [Activity ID, Lead Email, Assigned To, Type, Date]
optional: [Notes]
"""
# How each kind of rep answers a new lead (minutes after assignment, on the wall clock).
PROFILES = {
    "fast": [("Logged Call", 6), ("Accepted", 25), ("Meeting Scheduled", 26 * 60)],
    "slow": [("Logged Call", 5 * 60), ("Accepted", 30 * 60)],
    "silent": [],  # never answers: the SLA escalates and reassigns
}
# When the week's checks run, after the pipeline's `now` (minutes).
TICKS = (
    0,
    10,
    13,
    20,
    45,
    90,
    180,
    360,
    24 * 60,
    2 * 24 * 60,
    3 * 24 * 60,
    5 * 24 * 60,
    7 * 24 * 60,
)


def rep_profile(code: str) -> str:
    """A rep's answering habit, stable across runs: a third each, by name."""
    digest = hashlib.sha256(code.encode()).digest()[0]
    return ("fast", "slow", "silent")[digest % 3]


def due_activities(conn: Any, moment: datetime, written: set[tuple[int, str, str]]) -> pd.DataFrame:
    """What each owner has done by ``moment`` with the leads they hold, per their habit, not
    yet exported (``written``: (lead, rep, type) already in an export)."""
    a, leads, reps = t.assignments, t.leads, t.reps
    held = store.read_frame(
        conn,
        select(a.c.lead_id, a.c.rep_code, a.c.assigned_at, leads.c.email, reps.c.email.label("rep"))
        .select_from(a.join(leads, leads.c.id == a.c.lead_id).join(reps, reps.c.id == a.c.rep_id))
        .where(a.c.released_at.is_(None), leads.c.status.in_(["routed", "accepted"])),
    )
    rows = []
    for row in held.itertuples():
        for kind, minutes in PROFILES[rep_profile(row.rep_code)]:
            when = row.assigned_at + pd.Timedelta(minutes=minutes)
            key = (int(row.lead_id), row.rep_code, kind)
            if when <= moment and key not in written:
                written.add(key)
                rows.append(
                    {
                        "Activity ID": f"{row.lead_id}-{row.rep_code}-{kind}".replace(" ", "_"),
                        "Lead Email": row.email,
                        "Assigned To": row.rep,
                        "Type": kind,
                        "Date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "Notes": "",
                    }
                )
    return pd.DataFrame(
        rows, columns=["Activity ID", "Lead Email", "Assigned To", "Type", "Date", "Notes"]
    )


def sales_week(summary: dict[str, Any], start: datetime) -> dict[str, Any]:
    """A simulated week after the pipeline: at each tick, export what the reps did by then,
    ingest it as activities, and run the SLA check at that time. Returns the counts and the
    final compliance per policy and rep."""
    from flows.capture import capture
    from flows.sla import sla
    from leadflow.sla import check as sla_tasks

    settings = get_settings()
    # This run's CRM exports (their bytes are kept in raw_captures once ingested).
    folder = settings.var_dir / "sales-week"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    mapping = folder / "mapping.yaml"
    mapping.write_text(ACTIVITY_MAPPING)
    engine = store.get_engine(settings.database_url)
    written: set[tuple[int, str, str]] = set()
    totals = {"received": 0, "inserted": 0, "merged": 0, "quarantined": 0}
    checks = []
    for number, minutes in enumerate(TICKS):
        moment = start + timedelta(minutes=minutes)
        with engine.connect() as conn:
            frame = due_activities(conn, pd.Timestamp(moment), written)
        if len(frame):
            path = folder / f"tick-{number:02d}-{moment:%Y%m%dT%H%M}.csv"
            frame.to_csv(path, index=False)
            state = capture(
                str(path), source="demo-crm", mapping_path=str(mapping), now=moment,
                return_state=True,
            )  # fmt: skip
            got = state.result(raise_on_failure=False) or {}
            for name in totals:
                totals[name] += int(got.get(name, 0) or 0)
        state = sla(now=moment, notifier=f"maildir:{summary['mail']}", return_state=True)
        checks.append(state.result(raise_on_failure=False))
    with engine.connect() as conn:
        compliance = sla_tasks.compliance(conn)
        breaches = store.read_frame(
            conn,
            select(t.sla_breaches.c.level, t.sla_breaches.c.action, func.count().label("n"))
            .group_by(t.sla_breaches.c.level, t.sla_breaches.c.action)
            .order_by(t.sla_breaches.c.level, t.sla_breaches.c.action),
        )
    return {
        "ticks": len(TICKS),
        "activities": totals,
        "profiles": {
            profile: sorted(
                c for c in compliance["rep"].dropna().unique() if rep_profile(c) == profile
            )
            for profile in PROFILES
        },
        "warnings": sum(int(c.get("warnings", 0)) for c in checks if isinstance(c, dict)),
        "breaches": breaches.to_dict("records"),
        "compliance": compliance.to_dict("records"),
    }


def describe_sales_week(week: dict[str, Any]) -> list[str]:
    acts = week.get("activities") or {}
    lines = [
        f"sales week ({week['ticks']} SLA checks over 7 days): activities received "
        f"{acts.get('received', 0)}, inserted {acts.get('inserted', 0)}, quarantined "
        f"{acts.get('quarantined', 0)}; warnings {week.get('warnings', 0)}",
        "  reps by habit: "
        + "; ".join(f"{k}: {', '.join(v) or '-'}" for k, v in week["profiles"].items()),
        "  breaches: "
        + (
            ", ".join(f"level {b['level']} {b['action']} {b['n']}" for b in week["breaches"])
            or "none"
        ),
        f"  {'policy':<18} {'rep':<14} {'timers':>6} {'on time':>7} {'late':>5} {'open':>5} {'compliance':>10}",
    ]
    for row in week["compliance"]:
        share = row.get("compliance")
        shown = "-" if share is None or share != share else f"{share:.0%}"
        lines.append(
            f"  {row['policy']:<18} {row['rep'] or '-':<14} {row['timers']:>6} "
            f"{row['on_time']:>7} {row['late']:>5} {row['breached_open']:>5} {shown:>10}"
        )
    return lines


# --------------------------------------------------------------------------- a month of nurture

# Nurture ticks twice a day (02:00 and 14:00 UTC: a working hour somewhere in every region the
# sample has), recycling daily at 05:00, an SLA check daily at 14:00.
NURTURE_HOURS = (2, 14)


def month(summary: dict[str, Any], start: datetime, days: int = 30) -> dict[str, Any]:
    """A simulated month after the sales week, with ``now`` moved forward: nurture ticks,
    SLA checks and recycling. Returns what they did, added up, and the leakage at the end."""
    from flows.nurture import nurture
    from flows.recycle import recycle
    from flows.sla import sla

    mail = f"maildir:{summary['mail']}"
    first = (start + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    totals: dict[str, int] = dict.fromkeys(
        ("ticks", "enrolled", "queued", "sent", "deferred", "suppressed", "exited", "finished"), 0
    )
    recycled = {"recycled": 0, "long_term": 0, "disqualified": 0}
    reasons: dict[str, int] = {}
    leakage: dict[str, int] = {}
    for day in range(days):
        midnight = first + timedelta(days=day)
        for hour in NURTURE_HOURS:
            data = nurture.fn(now=midnight + timedelta(hours=hour), notifier=mail).data or {}
            totals["ticks"] += 1
            for name in ("enrolled", "queued", "deferred", "suppressed", "exited", "finished"):
                totals[name] += int(data.get(name, 0))
            totals["sent"] += int((data.get("notifications") or {}).get("sent", 0))
            if hour == 14:
                sla.fn(now=midnight + timedelta(hours=hour), notifier=mail)
        data = recycle.fn(now=midnight + timedelta(hours=5)).data or {}
        for name in recycled:
            recycled[name] += int(data.get(name, 0))
        for reason, count in (data.get("reasons") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(count)
        leakage = data.get("leakage") or leakage
    return {
        "days": days,
        "from": first.isoformat(),
        "nurture": totals,
        "recycling": recycled | {"reasons": reasons},
        "leakage": leakage,
    }


def describe_month(month_data: dict[str, Any]) -> list[str]:
    n, r = month_data["nurture"], month_data["recycling"]
    leaks = month_data.get("leakage") or {}
    return [
        f"a month of nurture ({month_data['days']} days, {n['ticks']} nurture ticks, daily SLA "
        f"checks and recycling): enrolled {n['enrolled']}, touches sent {n['sent']} "
        f"(queued {n['queued']}), deferred {n['deferred']}, suppressed {n['suppressed']}, "
        f"exited {n['exited']}, cadences finished {n['finished']}",
        f"  recycled to nurture {r['recycled']} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items()))
        + f"), long-term {r['long_term']}, disqualified {r['disqualified']}",
        f"  leakage: {leaks.get('no_owner_no_cadence', 0)} no owner and no cadence, "
        f"{leaks.get('stuck', 0)} stuck, {leaks.get('dead_claim', 0)} held by a dead run",
    ]
