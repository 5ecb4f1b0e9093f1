"""The recycle concern's Prefect layer: its tasks, events and artifacts."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from leadflow.recycle import hop as hop_impl
from leadflow.recycle.hop import RecycleContext


@task(name="recycle-candidates", cache_policy=NO_CACHE)
def candidates(database_url: str, context: RecycleContext, now: datetime) -> list[int]:
    """Leads that may have stalled at ``now`` (the hop decides precisely)."""
    return hop_impl.candidates(database_url, context, now)
