"""The speed-to-lead lane: a lead posted to ``leadflow serve`` is enriched, scored, routed
and its owner told within seconds, instead of at the next pipeline tick.

The lane is not a second pipeline. It runs the same hop declarations on the same runner
(``leadflow.runner.run_batch``), restricted to the leads it was handed, and then sends what the
outbox has due. Everything it does goes through the same claims, gates, ledger and outbox,
so a lead is never handled twice: if the pipeline got there first the lane's claim finds
nothing to do, and a lead the lane never saw (its worker was down, the hand-off failed)
is still waiting in its status for the scheduled pipeline.

It is handed leads as a Prefect background task (``speed_to_lead.delay(ids)``) served by a
task worker (``leadflow lane``): measured here, such a task starts 0.2 s after it is
queued, where an event-triggered deployment run takes 2-8 s and a burst of events becomes
one flow run each. ``leadflow serve`` hands over every group of posted records as one task
run, so a burst of posts becomes a few task runs, each over many leads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from leadflow import quality, store
from leadflow import runner as hops
from leadflow.enrich import hop as enrich
from leadflow.outbox.sender import send_due
from leadflow.routing import hop as route_hop
from leadflow.scoring import hop as score_hop
from leadflow.settings import get_settings
from tasks import crm as crm_tasks
from tasks import routing as routing_tasks
from tasks import scoring as scoring_tasks
from tasks.hops import announce_refusals
from tasks.outbox import announce_dead_letters, resolve_notifiers, with_calendars

log = logging.getLogger(__name__)

CONTEXT_TTL_SECONDS = 60.0  # rules edited on disk reach a running lane within a minute


@dataclass
class LaneContext:
    """What the lane's hops need, built once and reused while fresh (rules, accounts,
    provider, routing's reps): building them costs more than running the hops on a lead."""

    enrich: Any
    score: score_hop.ScoreContext
    route: route_hop.RouteContext
    notifiers: list[Any]
    built: float


_contexts: dict[tuple[str, str | None, str | None], LaneContext] = {}
_lock = threading.Lock()


def lane_context(
    database_url: str, provider: str | None, notifier: str | None, *, fresh: bool = False
) -> LaneContext:
    key = (database_url, provider, notifier)
    with _lock:
        context = _contexts.get(key)
        if fresh or context is None or time.monotonic() - context.built > CONTEXT_TTL_SECONDS:
            rules, version, text = _plain(scoring_tasks.load_rules)(None)
            context = LaneContext(
                enrich=_plain(enrich.build_context)(
                    database_url, provider, None, datetime.now(UTC)
                ),
                score=score_hop.ScoreContext(rules, version, text, mode="new"),
                route=_plain(routing_tasks.load_context)(None),
                notifiers=with_calendars(resolve_notifiers(notifier)),
                built=time.monotonic(),
            )
            _contexts[key] = context
        return context


def _only(hop: hops.Hop, ids: list[int]) -> hops.Hop:
    """``hop`` as declared, claiming only among ``ids`` (with its own strategy, so the lane
    and the pipeline exclude each other exactly as two pipeline runs do)."""
    from sqlalchemy import and_

    from leadflow import tables as t

    declared = hop.where

    def where(context: Any) -> Any:
        mine = t.leads.c.id.in_(ids)
        return and_(declared(context), mine) if declared is not None else mine

    return replace(hop, where=where)


def _batches(
    hop: hops.Hop, context: Any, engine: Any, now: datetime, run_id: str | None
) -> Iterator[Any]:
    """The hop's batches over the lane's leads until none is left (an id range can cover
    only part of them, so one claim is not always enough); ``run_id`` goes on every row
    they write, as a flow's run id does."""
    after = 0
    while True:
        outcome = hops.run_batch(hop, context, engine, now=now, after=after, flow_run_id=run_id)
        if outcome is None:
            return
        yield outcome
        if outcome.drained:
            return
        after = outcome.next_after


# How long the lane keeps coming back for leads whose id range a pipeline batch holds: the
# holder's transaction ends (a hop batch of 100k leads holds it some 10 s here), and then the
# lead is the lane's. Giving up sooner leaves a posted lead for the next pipeline tick.
PATIENCE_SECONDS = 60.0
SEND_OTHERS = 50  # due messages of other leads a lane run sends after its own
_one_lane = threading.Lock()  # lane runs of one worker take turns (id-range claims skip, not wait)
_pending: set[int] = set()  # leads handed to this process's lane that no run has taken yet
_pending_lock = threading.Lock()
WAITING = ("captured", "enriched")


def _pass(
    steps: Sequence[tuple[str, hops.Hop, Any]],
    ids: list[int],
    engine: Any,
    now: datetime,
    summary: dict[str, Any],
    run_id: str | None = None,
) -> bool:
    """One pass of the hops over ``ids``, added to ``summary``; True when a gate stopped it."""
    for name, hop, hop_context in steps:
        done = summary["hops"].setdefault(name, {"claimed": 0, "moved": {}, "quarantined": 0})
        try:
            for outcome in _batches(_only(hop, ids), hop_context, engine, now, run_id):
                done["claimed"] += outcome.claimed
                done["quarantined"] += outcome.quarantined
                for status, count in outcome.moved.items():
                    done["moved"][status] = done["moved"].get(status, 0) + int(count)
        except quality.GateFailed as failure:
            announce_refusals([failure.result])
            done["failed"] = str(failure)
            summary["stopped_at"] = name
            return True
    return False


def _still_waiting(engine: Any, ids: list[int]) -> bool:
    """Some of ``ids`` still wait for enrichment or scoring (not: provider pending, MQLs
    waiting for capacity, anything past them)."""
    from sqlalchemy import func, select

    from leadflow import tables as t

    leads = t.leads
    with engine.connect() as conn:
        query = select(func.count()).where(leads.c.id.in_(ids), leads.c.status.in_(WAITING))
        return bool(conn.execute(query).scalar_one())


def _plain(function: Any) -> Any:
    """A Prefect task's body without the task run (the lane is one task run already, and
    ``serve --lane inline`` runs with no Prefect API at all)."""
    return getattr(function, "fn", function)


def hand(lead_ids: Sequence[int]) -> None:
    """Leads for the next lane run of this process (``run_lane`` takes them all)."""
    with _pending_lock:
        _pending.update(int(i) for i in lead_ids)


def run_lane(
    lead_ids: Sequence[int],
    database_url: str | None = None,
    *,
    provider: str | None = None,
    notifier: str | None = None,
    now: datetime | None = None,
    handed: bool = False,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Enrich, score and route ``lead_ids`` (those still waiting for each hop), then send
    the outbox's due messages. Returns what each hop did; a hop whose gate refuses the
    batch stops the lane for those leads, which stay in their status for the pipeline.

    Runs in one process take turns, and a run takes every lead handed to the process so
    far, its own and those of the runs waiting behind it: under a burst the waiting runs
    find their leads done and return at once, so the lane's cost grows with the number of
    turns, not of leads. ``run_id`` (the lane's task run) is recorded on the rows it writes;
    ``summary["lead_ids"]`` are the leads this run took (handed to it or to runs behind it)."""
    started = time.monotonic()
    database_url = database_url or get_settings().database_url
    notifier = notifier or os.environ.get("LEADFLOW_NOTIFIER")
    context = lane_context(database_url, provider, notifier)
    engine = store.get_engine(database_url)
    if not handed:  # (``hand`` was called when the run was queued)
        hand(lead_ids)
    summary: dict[str, Any] = {"handed": len(set(lead_ids)), "hops": {}}
    with _one_lane:
        with _pending_lock:
            ids = sorted(_pending)
            _pending.clear()
        summary["leads"] = len(ids)
        summary["lead_ids"] = ids
        if not ids:  # an earlier run took them with its own
            summary["seconds"] = round(time.monotonic() - started, 3)
            return summary
        moment = now or datetime.now(UTC)
        rules = context.score
        score_context = score_hop.ScoreContext(
            rules.rules,
            rules.version,
            rules.text,
            mode="new",
            watermark=_plain(scoring_tasks.event_watermark)(database_url),
        )
        steps = (
            ("enrich", enrich.HOP, context.enrich),
            ("score", score_hop.SCORE_NEW, score_context),
            ("route", route_hop.HOP, context.route),
        )
        deadline, attempt = time.monotonic() + PATIENCE_SECONDS, 0
        while True:
            attempt += 1
            stopped = _pass(steps, ids, engine, moment, summary, run_id)
            if stopped or not _still_waiting(engine, ids) or time.monotonic() > deadline:
                break
            # A pipeline batch holds the id range these leads fall in: it started before they
            # were captured, so it does not have them. Try again once it has committed.
            time.sleep(min(0.25 * attempt, 1.0))
        summary["passes"] = attempt
        if context.notifiers:
            # Its own leads' messages first; then a few others (urgent first), no more: a
            # pipeline's backlog is its own senders' work, and the next posted lead waits
            # for this run's turn to end.
            summary["sent"] = send_due(
                engine,
                context.notifiers,
                SEND_OTHERS,
                datetime.now(UTC),
                first=None,
                leads_first=ids,
            ).as_dict()
            announce_dead_letters(summary["sent"])
        if crm := crm_tasks.sync_leads(database_url, ids):
            summary["crm"] = crm
    summary["seconds"] = round(time.monotonic() - started, 3)
    return summary


def _handed_name() -> str:
    """The name a lane task run starts with: the leads it was handed (it may take others'
    too, or find its own taken; ``_taken_name`` renames it once it knows)."""
    from prefect.runtime import task_run

    ids = (task_run.parameters or {}).get("lead_ids") or []
    return f"lane-handed-{_span(ids)}"


def _span(ids: Sequence[int]) -> str:
    if not ids:
        return "no-leads"
    if len(ids) == 1:
        return f"lead-{ids[0]}"
    return f"{len(ids)}-leads-{min(ids)}-to-{max(ids)}"


def _taken_name(summary: dict[str, Any]) -> str:
    """The name of a lane run that has finished: the leads it took, or that it took none."""
    taken = summary.get("lead_ids") or []
    if not taken:
        return "lane-none-left-taken-by-an-earlier-run"
    if not any(done.get("claimed") for done in summary["hops"].values()):
        return f"lane-{_span(taken)}-already-done"  # a retry, or the pipeline got there first
    return f"lane-{_span(taken)}"


def describe(summary: dict[str, Any]) -> str:
    """One sentence about a lane run, for its log."""
    handed = summary.get("handed", 0)
    if not summary.get("leads"):
        return (
            f"lane: took no leads in {summary.get('seconds', 0)} s: the {handed} lead(s) handed "
            "to it were taken by an earlier lane run of this worker"
        )
    hops_done = ", ".join(
        f"{name} {'stopped by its gate' if 'failed' in done else done['claimed']}"
        + (f" ({', '.join(f'{k} {v}' for k, v in done['moved'].items())})" if done["moved"] else "")
        for name, done in summary["hops"].items()
    )
    line = (
        f"lane: {summary['leads']} lead(s) ({_span(summary['lead_ids'])}, {handed} handed to "
        f"this run) in {summary['seconds']} s: claimed by {hops_done or 'no hop'}"
    )
    if sent := summary.get("sent"):
        line += (
            f"; outbox: sent {sent.get('sent', 0)}, failed {sent.get('failed', 0)}, "
            f"dead {sent.get('dead', 0)}"
        )
    return line


def _rename(run: Any, name: str) -> None:
    """Rename the running task run ``run`` (in the engine, whose final state carries the
    name, and on the server at once)."""
    from prefect.client.orchestration import get_client

    run.name = name
    try:
        with get_client(sync_client=True) as client:
            client.set_task_run_name(run.id, name)
    except Exception as exc:  # a name is not worth failing a lane run for
        log.warning("could not rename lane task run %s: %s", run.id, type(exc).__name__)


@task(
    name="speed-to-lead",
    task_run_name=_handed_name,
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=lambda task, run, state: _transient(state),
)
def speed_to_lead(lead_ids: list[int]) -> dict[str, Any]:
    """The lane over the posted leads ``lead_ids``, in the task worker's process (its
    database and notifier come from its own environment or blocks: a task's parameters are
    stored by Prefect, so no URL or credential is ever passed as one). The rows it writes
    carry its task run's id (a background task has no flow run)."""
    from prefect.context import TaskRunContext
    from prefect.logging import get_run_logger

    context = TaskRunContext.get()
    run = context.task_run if context else None
    summary = run_lane(lead_ids, run_id=str(run.id) if run else None)
    if run is not None:
        _rename(run, _taken_name(summary))
    get_run_logger().info("%s", describe(summary))
    return summary


def _transient(state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:
        return hops.is_transient(exc)
    return False


def serve(limit: int = 4) -> None:
    """Serve the lane's task until stopped (``leadflow lane``)."""
    from prefect.task_worker import serve as serve_tasks

    from tasks.ops import sweep_in_background

    sweep_in_background()  # a killed lane's runs, left Running: Crashed (tasks/ops.py)
    serve_tasks(speed_to_lead, limit=limit)
