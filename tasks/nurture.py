"""The nurture concern's Prefect layer: its tasks, events and artifacts."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from leadflow.nurture import store as store_impl
from leadflow.nurture.plan import NurtureContext


@task(name="nurture-prepare", cache_policy=NO_CACHE)
def prepare_tick(database_url: str, context: NurtureContext, now: datetime) -> dict[str, int]:
    """Before the hop, set-based: end the enrolments of leads that left ``nurturing``, and
    bring enrolments that follow an older version of the cadences to this one per
    ``on_change`` (``keep``: step and due time stay; ``replan``: due = previous touch (or
    enrolment) + the new step's delay). Returns counts."""
    return store_impl.prepare_tick(database_url, context, now)


@task(name="nurture-candidates", cache_policy=NO_CACHE)
def candidates(database_url: str, now: datetime) -> list[int]:
    """Leads the tick must look at: a touch due at ``now``, or nurturing in no cadence (to
    enrol them, or to see that nothing takes them: the leakage report lists those)."""
    return store_impl.candidates(database_url, now)


def emit_finished(finished: list[tuple[int, str]], limit: int = 1000) -> int:
    """One ``leadflow.cadence.finished`` event per lead that finished a cadence (capped; past
    the cap, one ``.many`` event with the count)."""
    from prefect.events import emit_event

    for lead_id, cadence in finished[:limit]:
        emit_event(
            event="leadflow.cadence.finished",
            resource={"prefect.resource.id": f"leadflow.lead.{lead_id}"},
            related=[
                {
                    "prefect.resource.id": f"leadflow.cadence.{cadence}",
                    "prefect.resource.role": "cadence",
                }
            ],
        )
    if len(finished) > limit:
        emit_event(
            event="leadflow.cadence.finished.many",
            resource={"prefect.resource.id": "leadflow.nurture"},
            payload={"finished": len(finished), "emitted_individually": limit},
        )
    return min(len(finished), limit)
