"""The CRM concern's Prefect layer: the sync and pull tasks, their events."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.crm import load_adapter
from leadflow import store
from leadflow.crm import mapping as crm_mapping
from leadflow.crm import sync as crm_sync
from leadflow.quarantine import masked
from tasks.outbox import announce_dead_letters

log = logging.getLogger(__name__)
LANE_LOCK_WAIT = 5.0  # a crm-sync run holds the CRM: it will send these leads' messages too
ADAPTER_SECONDS = 300.0  # a long-lived process (the lane) reuses a CRM session this long
_adapters: dict[str, tuple[float, Any]] = {}


def adapter_for(crm: str, id_property: str, *, reuse: bool = False) -> Any:
    """The adapter of ``crm`` from its block; with ``reuse``, the same one for a while (the
    lane syncs a few leads a turn: a Salesforce login per turn would double its calls)."""
    if reuse and (held := _adapters.get(crm)) and time.monotonic() - held[0] < ADAPTER_SECONDS:
        return held[1]
    adapter = load_adapter(crm, id_property)
    if reuse:
        _adapters[crm] = (time.monotonic(), adapter)
    return adapter


def sync_leads(database_url: str, lead_ids: Sequence[int]) -> dict[str, str]:
    """The lane's part: these leads' sync messages to every enabled CRM, now (so a form's
    lead is in the CRM, owned, within seconds). Never raises: a CRM problem leaves the
    messages queued for the crm-sync deployment, and the line says why."""
    out: dict[str, str] = {}
    try:
        targets = crm_mapping.enabled()
    except Exception as exc:  # a broken mapping: the crm-sync deployment fails loudly
        return {"error": str(exc).splitlines()[0]}
    engine = store.get_engine(database_url)
    for mapping in targets:
        try:
            report = crm_sync.sync(
                engine,
                adapter_for(mapping.crm, mapping.id_property, reuse=True),
                mapping,
                lead_ids=lead_ids,
                lock_wait=LANE_LOCK_WAIT,
            )
            out[mapping.crm] = report.describe()
            if report.error:
                _adapters.pop(mapping.crm, None)  # a fresh session next time
        except Exception as exc:
            _adapters.pop(mapping.crm, None)
            out[mapping.crm] = f"not synced now ({type(exc).__name__}: {masked(str(exc))})"
    return out


def enabled(crm: str | None) -> list[crm_mapping.CrmMapping]:
    """The mappings to work on: ``crm`` alone (its mapping, enabled or not: a person asked),
    else every enabled one."""
    if crm:
        return [crm_mapping.load_mapping(crm)[0]]
    return crm_mapping.enabled()


@task(name="crm-sync", cache_policy=NO_CACHE, task_run_name="crm-sync-{crm}")
def sync_crm(
    database_url: str,
    crm: str,
    *,
    now: datetime | None = None,
    lead_ids: Sequence[int] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Send ``crm``'s due sync messages (``leadflow.crm.sync.sync``); dead letters are
    announced like the outbox's (``leadflow.outbox.dead-letters``)."""
    mapping = crm_mapping.load_mapping(crm)[0]
    engine = store.get_engine(database_url)
    report = crm_sync.sync(
        engine,
        load_adapter(crm, mapping.id_property),
        mapping,
        now=now,
        lead_ids=lead_ids,
        limit=limit,
    )
    log.info("%s", report.describe())
    out = report.as_dict()
    out["message"] = report.describe()
    announce_dead_letters(out)
    publish_sync(engine, report)
    return out


def publish_sync(engine: Any, report: crm_sync.SyncReport) -> None:
    """The run's counts and the commonest reasons its CRM's messages wait or died (masked),
    as a ``crm-sync-<crm>`` table artifact in the Prefect UI."""
    from prefect.artifacts import create_table_artifact
    from sqlalchemy import func, select

    from leadflow import tables as t

    table = t.outbox
    with engine.connect() as conn:
        reasons = conn.execute(
            select(table.c.status, table.c.last_error, func.count().label("n"))
            .where(
                table.c.kind == "crm_sync",
                table.c.recipient == report.crm,
                table.c.status.in_(("pending", "failed", "dead")),
                table.c.last_error.is_not(None),
            )
            .group_by(table.c.status, table.c.last_error)
            .order_by(func.count().desc())
            .limit(10)
        ).all()
    rows = [
        {"what": name, "count": getattr(report, name)}
        for name in ("leads", "written", "created", "unchanged", "kept", "failed", "dead")
    ]
    rows += [{"what": "api calls", "count": report.usage.get("calls", 0)}]
    rows += [
        {"what": f"{status}: {masked(str(error))[:200]}", "count": int(n)}
        for status, error, n in reasons
    ]
    try:
        create_table_artifact(
            key=f"crm-sync-{report.crm}",
            table=rows,
            description=report.describe(),
        )
    except Exception as exc:  # the UI's table must not fail a sync that was done
        log.warning("could not publish the %s sync's artifact: %s", report.crm, exc)


@task(name="crm-pull", cache_policy=NO_CACHE, task_run_name="crm-pull-{crm}")
def pull_crm(database_url: str, crm: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Read back what people changed in ``crm`` since the last pull
    (``leadflow.crm.pull.pull``)."""
    from leadflow.crm.pull import pull

    mapping = crm_mapping.load_mapping(crm)[0]
    adapter = load_adapter(crm, mapping.id_property)
    report = pull(store.get_engine(database_url), adapter, mapping, now=now)
    log.info("%s", report.describe())
    out = report.as_dict()
    out["message"] = report.describe()
    return out
