"""Enrich flow: captured leads become enriched, batch by batch, until none are waiting.

Each batch: claim, derive locally, look up firmographics per distinct domain (cache first),
match accounts, gate, write. If the provider is down, the batch still completes: the
affected leads become ``enrichment_pending`` and the run says so; the next run retries them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote
from sqlalchemy import or_, select

from leadflow import store
from leadflow import tables as t
from leadflow.enrichment_rules import load_enrichment_rules
from leadflow.lifecycle import Status
from leadflow.settings import get_settings
from tasks import enrich as hop
from tasks import hops, matching, quality


@task(name="enrich-context", cache_policy=NO_CACHE)
def build_context(
    database_url: str, provider: str | None, rules_path: str | None
) -> hop.EnrichContext:
    """The provider and the account index, once per run."""
    rules, _ = load_enrichment_rules(rules_path)
    spec = provider or rules.provider
    accounts = t.accounts
    with store.get_engine(database_url).connect() as conn:
        frame = store.read_frame(
            conn,
            select(
                accounts.c.id,
                accounts.c.name,
                accounts.c.domain,
                accounts.c.aliases,
                accounts.c.owner_rep_id,
            ),
        )
    index = matching.build_index(frame, hop.load_lists().legal_suffixes)
    return hop.EnrichContext(
        provider=hop.make_provider(spec),
        accounts=index,
        threshold=rules.match.fuzzy_threshold,
        min_name_length=rules.match.min_name_length,
    )


@task(name="claim-enrich-batch", cache_policy=NO_CACHE)
def claim_batch(database_url: str, token: str, size: int, started: datetime) -> int:
    """Claim captured leads, and pending ones not yet retried in this run."""
    leads = t.leads
    retry = or_(
        leads.c.status == Status.CAPTURED.value,
        leads.c.enrich_attempted_at.is_(None),
        leads.c.enrich_attempted_at < started,
    )
    return store.claim_leads(
        store.get_engine(database_url),
        [Status.CAPTURED.value, Status.ENRICHMENT_PENDING.value],
        size,
        token,
        extra_where=retry,
    )


@task(name="enrich-batch", cache_policy=NO_CACHE, task_run_name="enrich-batch-{batch_no}")
def enrich_batch(
    database_url: str,
    token: str,
    context: hop.EnrichContext,
    now: datetime,
    batch_no: int,
    max_quarantine_rate: float | None = None,
) -> hops.HopOutcome:
    engine = store.get_engine(database_url)
    with hops.claimed(engine, token):
        leads = hops.load_claimed(engine, token, hop.INPUT_COLUMNS)
        enriched, lookups = hop.enrich_frame(leads, context, engine, now)
        outcome = hops.gate_and_write(
            engine,
            hop=hop.HOP,
            suite=hop.SUITE,
            actor="enrich",
            token=token,
            produced=hop.gate_frame(leads, enriched),
            changes=hop.enrichment_changes(leads, enriched, now),
            now=now,
            flow_run_id=flow_run.get_id(),
            max_quarantine_rate=max_quarantine_rate,
            batch_ref=f"enrich:{token.split(':', 1)[1][:12]}",
        )
    outcome.extra = lookups
    return outcome


@flow(name="enrich", flow_run_name="enrich")
def enrich(
    now: datetime | None = None,
    database_url: str | None = None,
    provider: str | None = None,
    rules_path: str | None = None,
    batch_size: int | None = None,
    max_quarantine_rate: float | None = None,
) -> State:
    """Enrich every lead waiting in ``captured`` (and retry ``enrichment_pending`` ones).

    ``provider``: none | file:PATH | block:NAME (default: rules/enrichment.yaml).
    """
    started_clock = time.monotonic()
    started = datetime.now(UTC)
    settings = get_settings()
    database_url = database_url or settings.database_url
    now = now or started
    size = batch_size or settings.batch_size
    context = build_context(database_url, provider, rules_path)
    summary: dict[str, Any] = {
        "enriched": 0,
        "pending": 0,
        "quarantined": 0,
        "batches": 0,
        "accounts_matched": 0,
        "lookups": {},
    }
    gates: list[quality.GateResult] = []
    failure = None
    batch_no = 0
    while True:
        token = store.new_claim_token("enrich")
        if claim_batch(database_url, token, size, started) == 0:
            break
        batch_no += 1
        state = enrich_batch(
            database_url,
            token,
            quote(context),
            now,
            batch_no,
            max_quarantine_rate,
            return_state=True,
        )
        try:
            outcome = state.result()
        except quality.GateFailed as exc:
            gates.append(exc.result)
            failure = str(exc)
            break
        gates.append(outcome.gate)
        summary["batches"] += 1
        summary["enriched"] += outcome.statuses.get(Status.ENRICHED.value, 0)
        summary["pending"] += outcome.statuses.get(Status.ENRICHMENT_PENDING.value, 0)
        summary["quarantined"] += outcome.quarantined
        summary["accounts_matched"] += outcome.extra.pop("accounts_matched", 0)
        for name, value in outcome.extra.items():
            if isinstance(value, bool):
                summary["lookups"][name] = summary["lookups"].get(name, False) or value
            else:
                summary["lookups"][name] = summary["lookups"].get(name, 0) + value
    done = summary["enriched"] + summary["pending"]
    summary["match_rate"] = round(summary["accounts_matched"] / done, 4) if done else 0.0
    lookups = summary["lookups"]
    asked = lookups.get("found", 0) + lookups.get("not_found", 0) + lookups.get("invalid", 0)
    summary["firmographics_match_rate"] = (
        round(lookups.get("found", 0) / asked, 4) if asked else 0.0
    )
    summary["seconds"] = round(time.monotonic() - started_clock, 3)
    if gates:
        quality.publish_docs(gates)
        create_table_artifact(
            key="dq-enriched",
            table=quality.artifact_rows(gates),
            description="Data-quality gate results for the enrich hop in this run",
        )
    if failure:
        return Failed(message=failure, data=summary)
    message = (
        f"enriched {summary['enriched']}, pending {summary['pending']}, quarantined "
        f"{summary['quarantined']}, account match rate {summary['match_rate']:.1%}"
    )
    if summary["pending"]:
        # Completed, but not done: the provider was unavailable for some leads.
        return Completed(
            name="Completed with pending", message=message + " (provider unavailable)", data=summary
        )
    return Completed(message=message, data=summary)
