"""The demo's own steps: sample data and reference data in place, the closing report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from leadflow import audit, reference, store
from leadflow.generate import generate
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
            f"owner notifications: sent {sent.get('sent', 0)}, failed {sent.get('failed', 0)}"
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
