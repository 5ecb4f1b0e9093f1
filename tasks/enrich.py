"""The enrich concern's Prefect layer: its tasks, events and artifacts."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from leadflow.enrich import hop as hop_impl
from leadflow.enrich.hop import EnrichContext


@task(name="enrich-context", cache_policy=NO_CACHE)
def build_context(
    database_url: str, provider: str | None, rules_path: str | None, started: datetime
) -> EnrichContext:
    """The provider and the account index, once per run."""
    return hop_impl.build_context(database_url, provider, rules_path, started)
