"""The capture hop's Prefect tasks: the units the capture flow composes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from leadflow import quality, store
from leadflow.capture.prepare import PreparedChunk
from leadflow.capture.rules import SourceMapping
from leadflow.capture.write import ChunkOutcome, write_capture_chunk


def not_a_gate_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient errors, never a gate's verdict."""
    try:
        state.result()
    except quality.GateFailed:
        return False
    except Exception:
        return True
    return False


@task(
    name="capture-chunk",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=not_a_gate_failure,
    task_run_name="capture-{chunk.batch_id}-chunk-{chunk.chunk_no}",
)
def capture_chunk(
    database_url: str,
    chunk: PreparedChunk,
    mapping: SourceMapping,
    now: datetime,
    cursor: tuple[str, str] | None = None,
) -> ChunkOutcome:
    """Merge and store one prepared chunk of records (one transaction)."""
    from prefect.runtime import flow_run

    outcome = write_capture_chunk(
        store.get_engine(database_url),
        chunk=chunk,
        mapping=mapping,
        now=now,
        flow_run_id=flow_run.get_id(),
        cursor=cursor,
    )
    log_outcome(outcome)
    return outcome


def log_outcome(outcome: ChunkOutcome) -> None:
    from prefect.logging import get_run_logger

    get_run_logger().info(
        "batch %s chunk %s: received %s, inserted %s, merged %s, quarantined %s",
        outcome.batch_id,
        outcome.chunk_no,
        outcome.received,
        outcome.inserted,
        outcome.merged,
        outcome.quarantined,
    )
    if outcome.effects:
        get_run_logger().info(
            "batch %s chunk %s: %s",
            outcome.batch_id,
            outcome.chunk_no,
            ", ".join(f"{name} {count}" for name, count in outcome.effects.items()),
        )
