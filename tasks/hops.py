"""The hops concern's Prefect layer: its tasks, events and artifacts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from leadflow import progress, quality, queue, store
from leadflow.queue import Strategy
from leadflow.runner import Hop, HopOutcome, HopRun, log, retry_transient, run_batch


@task(
    name="hop-batch",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=retry_transient,
    task_run_name="{hop.name}-batch-{batch_no}",
)
def hop_batch(
    hop: Hop,
    context: Any,
    database_url: str,
    now: datetime,
    after: int,
    candidates: Sequence[int] | None,
    batch_no: int,
    max_quarantine_rate: float | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
) -> HopOutcome | None:
    """One batch of ``hop`` as a Prefect task run (retried on a dropped connection)."""
    from prefect.runtime import flow_run

    return run_batch(
        hop,
        context,
        store.get_engine(database_url),
        now=now,
        after=after,
        candidates=candidates,
        batch_no=batch_no,
        flow_run_id=flow_run.get_id(),
        max_quarantine_rate=max_quarantine_rate,
        dry_run=dry_run,
        batch_size=batch_size,
    )


def drain(
    hop: Hop,
    context: Any,
    *,
    database_url: str,
    now: datetime,
    candidates: Sequence[int] | None = None,
    max_quarantine_rate: float | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    on_batch: Callable[[HopOutcome], None] | None = None,
    publish: bool = True,
) -> HopRun:
    """Run batches of ``hop`` until nothing is waiting (or a gate fails, or a batch fails
    after its retries); publish the ``dq-<suite>`` artifact and Data Docs."""
    run = HopRun(hop=hop.name)
    after = 0
    while True:
        state = hop_batch(
            quote(hop),
            quote(context),
            database_url,
            now,
            after,
            quote(candidates),
            run.batches + 1,
            max_quarantine_rate,
            dry_run,
            batch_size,
            return_state=True,
        )
        try:
            outcome = state.result()
        except quality.GateFailed as exc:
            run.gates.append(exc.result)
            run.failure = str(exc)
            break
        except Exception as exc:  # retries exhausted: say what really happened
            run.failure = f"{hop.name} batch {run.batches + 1} failed: {type(exc).__name__}: {exc}"
            break
        if outcome is None:
            break
        run.add(outcome)
        progress.advance(f"{hop.name}: leads", outcome.claimed)
        if on_batch is not None:
            on_batch(outcome)
        if outcome.drained:  # no need for one more (empty) task run to find out
            break
        after = outcome.next_after
    if run.taken_over:
        log.warning("%s took over %d leads from a dead run's claim", hop.name, run.taken_over)
    if hop.strategy is Strategy.LEASE:  # the only claims that outlive their transaction
        with store.get_engine(database_url).connect() as conn:
            run.held = queue.held_by_others(conn, [s.value for s in hop.inputs])
        if run.held:
            log.warning("%s: %d waiting leads are held by another claim", hop.name, run.held)
    announce_refusals(run.gates)
    if publish and run.gates:
        publish_gates(hop.suite, run.gates)
    return run


def run_name(prefix: str) -> Callable[[], str]:
    """A flow run name that says what ran and for when: ``pipeline-2026-11-22T10:00``."""

    def name() -> str:
        from prefect.runtime import flow_run

        now = (flow_run.parameters or {}).get("now") or datetime.now(UTC)
        if isinstance(now, str):
            now = datetime.fromisoformat(now)
        return f"{prefix}-{now:%Y-%m-%dT%H:%M}"

    return name


def announce_refusals(gates: Iterable[quality.GateResult], limit: int = 10) -> int:
    """One Prefect event ``leadflow.gate.refused`` per hop whose gate refused batches among
    ``gates`` (an automation tells ops): the hop and suite as the resource, and counts,
    batch references and the failed checks' names as the payload, never a row's values.
    Returns the number of events; an unreachable API is logged, never raised."""
    from prefect.events import emit_event

    refused: dict[tuple[str, str], list[quality.GateResult]] = {}
    for gate in gates:
        if not gate.success:  # the hop (capture, enrich, ...) heads its batch reference
            hop = gate.batch_ref.split(":", 1)[0] if ":" in gate.batch_ref else gate.hop
            refused.setdefault((hop, gate.suite), []).append(gate)
    for (hop, suite), results in refused.items():
        try:
            emit_event(
                event="leadflow.gate.refused",
                resource={
                    "prefect.resource.id": f"leadflow.gate.{hop}",
                    "prefect.resource.name": hop,
                    "leadflow.hop": hop,
                    "leadflow.suite": suite,
                },
                payload={
                    "refused": len(results),
                    "batches": [r.batch_ref for r in results[:limit]],
                    "checks": sorted({name for r in results for name in r.failed_checks}),
                    "evaluated": sum(r.evaluated for r in results),
                    "quarantined": sum(r.quarantined for r in results),
                },
            )
        except Exception as exc:  # telling ops must not turn a refusal into a crash
            log.warning("could not announce the %s gate's refusal: %s", hop, exc)
    return len(refused)


def publish_gates(suite: str, gates: list[quality.GateResult]) -> None:
    """The hop's gate results as a ``dq-<suite>`` table artifact, and Data Docs."""
    from prefect.artifacts import create_table_artifact

    quality.publish_docs(gates)
    create_table_artifact(
        key=f"dq-{suite}",
        table=quality.artifact_rows(gates),
        description=f"Data-quality gate results for the {suite} hop in this run",
    )
