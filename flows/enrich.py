"""Enrich flow: captured leads become enriched, batch by batch, until none are waiting.

The hop itself (claim, derive, look up firmographics per distinct domain, match accounts,
gate, write) is declared in ``leadflow/enrich/hop.py``. If the provider is down, batches still
complete: the affected leads become ``enrichment_pending`` and the next run retries them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow
from prefect.states import Completed, Failed, State

from leadflow.enrich import hop
from leadflow.settings import get_settings
from tasks import enrich as enrich_tasks
from tasks import hops as hop_tasks
from tasks import rules_check


@flow(name="enrich", flow_run_name=hop_tasks.run_name("enrich"))
def enrich(
    now: datetime | None = None,
    database_url: str | None = None,
    provider: str | None = None,
    rules_path: str | None = None,
    max_quarantine_rate: float | None = None,
    batch_size: int | None = None,
) -> State:
    """Enrich every lead waiting in ``captured`` (and retry ``enrichment_pending`` ones).

    ``provider``: none | file:PATH | block:NAME (default: rules/enrichment.yaml).
    """
    if refused := rules_check.refusal(rules_check.enrichment, rules_path):
        return refused
    clock = time.monotonic()
    started = datetime.now(UTC)
    database_url = database_url or get_settings().database_url
    now = now or started
    context = enrich_tasks.build_context(database_url, provider, rules_path, started)
    run = hop_tasks.drain(
        hop.HOP,
        context,
        database_url=database_url,
        now=now,
        max_quarantine_rate=max_quarantine_rate,
        batch_size=batch_size,
    )
    summary = hop.summarise(run)
    summary["seconds"] = round(time.monotonic() - clock, 3)
    if run.failure:
        return Failed(message=run.failure, data=summary)
    message = (
        f"enriched {summary['enriched']}, pending {summary['pending']}, quarantined "
        f"{summary['quarantined']}, account match rate {summary['match_rate']:.1%}" + run.notes()
    )
    if summary["pending"]:  # completed, but not done: the provider was unavailable for some
        return Completed(
            name="Completed with pending", message=message + " (provider unavailable)", data=summary
        )
    return Completed(message=message, data=summary)
