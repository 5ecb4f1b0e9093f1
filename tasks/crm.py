"""The CRM concern's Prefect layer: the sync and pull tasks, their events."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.crm import load_adapter
from leadflow import store
from leadflow.crm import mapping as crm_mapping
from leadflow.crm import sync as crm_sync
from tasks.outbox import announce_dead_letters

log = logging.getLogger(__name__)


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
        engine, load_adapter(crm), mapping, now=now, lead_ids=lead_ids, limit=limit
    )
    log.info("%s", report.describe())
    out = report.as_dict()
    out["message"] = report.describe()
    announce_dead_letters(out)
    return out


@task(name="crm-pull", cache_policy=NO_CACHE, task_run_name="crm-pull-{crm}")
def pull_crm(database_url: str, crm: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Read back what people changed in ``crm`` since the last pull
    (``leadflow.crm.pull.pull``)."""
    from leadflow.crm.pull import pull

    mapping = crm_mapping.load_mapping(crm)[0]
    report = pull(store.get_engine(database_url), load_adapter(crm), mapping, now=now)
    log.info("%s", report.describe())
    out = report.as_dict()
    out["message"] = report.describe()
    return out
