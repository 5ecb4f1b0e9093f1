"""The hop runner: what every hop after capture does, written once.

A hop is a declaration (``Hop``): a name, its input statuses, how it claims (a
``queue.Strategy``), the columns it reads, an optional ``fetch`` (the I/O it needs besides
the leads: engagement events, firmographics, rep state), its **pure** ``transform``
(DataFrames in, ``HopResult`` out: no database, no Prefect), its GX suite, and an optional
``persist`` for rows beyond the leads. For each batch the runner

1. claims a bounded batch of leads in the input statuses (``leadflow.queue``);
2. reads it as a DataFrame and fetches what the hop needs;
3. calls the pure transform;
4. gates the result with the suite (failing rows to quarantine, a batch verdict);
5. writes results, transitions (through ``lifecycle``), quarantine rows, the hop's own rows
   and the verdict in one transaction, and gives the claim back.

``drain`` runs batches until none are left and adds them up; a flow is a few lines around it.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, PendingRollbackError

from leadflow import lifecycle, quality, queue, store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.queue import Strategy
from leadflow.settings import get_settings

log = logging.getLogger(__name__)


@dataclass
class HopResult:
    """What a hop's pure transform returns for one batch.

    ``changes``: what ``lifecycle.apply`` takes (id, from_status, to_status, reason, fields).
    ``checked``: what the suite reads, one row per lead, keyed by ``id``.
    ``rows``: other tables' rows (name -> frame with ``lead_id``), written in the batch's
    transaction except for leads the gate quarantined.
    ``stats``: counts added up over the run. ``report``: anything else the flow reads back.
    """

    changes: pd.DataFrame
    checked: pd.DataFrame
    rows: dict[str, pd.DataFrame] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    report: Any = None
    flow_run_id: str | None = None  # set by write_gated: the run that writes this batch


@dataclass(frozen=True)
class Hop:
    """A hop, declared. ``context`` is whatever the hop's run built once (rules, provider)."""

    name: str
    inputs: tuple[Status, ...]
    suite: str
    strategy: queue.Strategy
    columns: Callable[[Any], Sequence[Any]]
    transform: Callable[[pd.DataFrame, Any, Any, datetime], HopResult]
    fetch: Callable[[Connection, pd.DataFrame, Any, datetime], Any] | None = None
    persist: Callable[[Connection, HopResult, Any, set[int]], None] | None = None
    where: Callable[[Any], Any] | None = None
    batch_size: int | None = None  # a cap on LEADFLOW_BATCH_SIZE for this hop


@dataclass
class HopOutcome:
    """What one batch of a hop did (small: this is what tasks return to flows)."""

    hop: str
    claimed: int = 0
    moved: dict[str, int] = field(default_factory=dict)  # to-status -> leads that changed status
    statuses: dict[str, int] = field(default_factory=dict)  # to-status -> all leads of the batch
    quarantined: int = 0
    taken_over: int = 0
    next_after: int = 0
    drained: bool = False  # the claim came back short: nothing else was waiting
    gate: quality.GateResult | None = field(default=None, repr=False)
    stats: dict[str, Any] = field(default_factory=dict)
    report: Any = field(default=None, repr=False)


# --------------------------------------------------------------------------- one batch


def batch_ref(hop: str, flow_run_id: str | None, batch_no: int) -> str:
    """The gate verdict's reference: the hop, the run, the batch, and a random suffix, so it
    is unique across runs and across passes of one run (score: new, then engaged)."""
    return f"{hop}:{(flow_run_id or 'no-run')[:8]}:{batch_no}:{uuid.uuid4().hex[:6]}"


def run_batch(
    hop: Hop,
    context: Any,
    engine: Engine,
    *,
    now: datetime,
    after: int = 0,
    candidates: Sequence[int] | None = None,
    batch_no: int = 1,
    flow_run_id: str | None = None,
    max_quarantine_rate: float | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
) -> HopOutcome | None:
    """Claim, read, transform, gate and write one batch; None when nothing is waiting.

    A batch-level gate failure writes nothing but the verdict and raises
    ``quality.GateFailed``. ``dry_run`` transforms and returns the result, writing nothing.
    """
    request = queue.Request(
        hop=hop.name,
        statuses=tuple(s.value for s in hop.inputs),
        size=batch_size or min(hop.batch_size or sys.maxsize, get_settings().batch_size),
        strategy=hop.strategy,
        after=after,
        ids=candidates,
        where=hop.where(context) if hop.where else None,
        flow_run_id=flow_run_id,
    )
    failed: quality.GateResult | None = None
    with queue.claim(engine, request) as batch:
        if batch is None:
            return None
        with batch.reading() as conn:
            leads = batch.read(conn, hop.columns(context))
        side = None
        if hop.fetch is not None:
            # Its own connection: on SQLite a connection that has read holds the write lock
            # until it closes, and a fetch may write (the firmographics cache).
            with batch.reading() as conn:
                side = hop.fetch(conn, leads, context, now)
        result = hop.transform(leads, side, context, now)
        outcome = HopOutcome(hop=hop.name, taken_over=batch.taken_over, next_after=batch.next_after)
        # Leases and serial claims take the first waiting leads: a short batch was all there
        # was. (Id ranges and candidate lists can come back short with more to come.)
        short = len(leads) < request.size and hop.strategy in (Strategy.LEASE, Strategy.SERIAL)
        outcome.drained = short
        if dry_run:
            outcome.claimed = len(leads)
            outcome.stats, outcome.report = dict(result.stats), result.report
            return outcome
        split, verdict = gate(
            hop.suite,
            result.checked,
            batch_ref=batch_ref(hop.name, flow_run_id, batch_no),
            max_quarantine_rate=max_quarantine_rate,
        )
        if verdict.success:
            with batch.writing() as conn:
                write_gated(
                    conn,
                    hop,
                    context,
                    result,
                    split,
                    verdict,
                    outcome,
                    batch.guard,
                    now,
                    flow_run_id,
                )
            outcome.stats, outcome.report = dict(result.stats), result.report  # as persisted
            return outcome
        failed = verdict  # recorded below, once the claim's transaction has ended
    with engine.begin() as conn:
        quality.record(conn, failed, flow_run_id=flow_run_id, at=store.utcnow())
    raise quality.GateFailed(failed)


def gate(
    suite: str, produced: pd.DataFrame, *, batch_ref: str, max_quarantine_rate: float | None = None
) -> tuple[quality.RowSplit, quality.GateResult]:
    """Run the hop's suite over what it produced (one row per lead, keyed by ``id``)."""
    split = quality.split_rows(suite, produced)
    result = quality.check_batch(
        suite,
        split.passed,
        batch_ref=batch_ref,
        received=len(produced),
        quarantined=len(split.quarantined),
        row_checks=split.checks,
        max_quarantine_rate=max_quarantine_rate,
        row_validation=split.validation,
    )
    return split, result


def _jsonable_rows(frame: pd.DataFrame) -> list[str]:
    return [json.dumps(row, default=str, ensure_ascii=False) for row in frame.to_dict("records")]


def write_gated(
    conn: Connection,
    hop: Hop,
    context: Any,
    result: HopResult,
    split: quality.RowSplit,
    verdict: quality.GateResult,
    outcome: HopOutcome,
    guard: str | None,
    now: datetime,
    flow_run_id: str | None,
) -> None:
    """Write a batch that passed its gate, in ``conn``'s transaction, and fill ``outcome``.

    Leads failing a row-level expectation move to ``quarantined`` instead, with a quarantine
    row naming what they broke; their rows in ``result.rows`` are not written. With a lease
    ``guard``, only leads still claimed by it are written (else ``StaleTransition``).
    """
    result.flow_run_id = flow_run_id  # what the hop's persist step records its rows under
    bad_ids = set(split.quarantined["id"].tolist())
    changes = _changes_with_held_leads(hop, result.changes.copy(), bad_ids)
    if guard is not None:
        changes["claimed_by"] = None
        changes["claim_expires_at"] = pd.NaT
    if bad_ids:
        _send_held_to_quarantine(hop, changes, split.quarantined, bad_ids)
    lifecycle.apply(
        conn, changes, actor=hop.name, at=now, claimed_by=guard, flow_run_id=flow_run_id
    )
    if bad_ids:
        _write_quarantine_rows(conn, hop, split.quarantined, flow_run_id)
    _write_hop_rows(conn, result, bad_ids, flow_run_id)
    if hop.persist is not None:
        hop.persist(conn, result, context, bad_ids)
    quality.record(conn, verdict, flow_run_id=flow_run_id, at=store.utcnow())
    _fill_outcome(outcome, verdict, changes, bad_ids)


def _changes_with_held_leads(hop: Hop, changes: pd.DataFrame, bad_ids: set[Any]) -> pd.DataFrame:
    """The hop's changes plus a stay-as-you-are row for each lead its gate held that they do
    not list (a hop that leaves most of its leads as they are lists only its moves: nurture);
    a held lead needs a row to move to quarantine from."""
    missing = bad_ids - set(changes["id"].tolist())
    if not missing:
        return changes
    if len(hop.inputs) != 1:
        raise ValueError(f"{hop.name}: the gate held leads the hop's changes do not list")
    return pd.concat(
        [
            changes,
            pd.DataFrame(
                {
                    "id": sorted(missing),
                    "from_status": hop.inputs[0].value,
                    "to_status": hop.inputs[0].value,
                }
            ),
        ],
        ignore_index=True,
    )


def _send_held_to_quarantine(
    hop: Hop, changes: pd.DataFrame, quarantined: pd.DataFrame, bad_ids: set[Any]
) -> None:
    """Point the held leads' changes at ``quarantined``, with the expectations they broke as
    the reason."""
    held = changes["id"].isin(bad_ids)
    reasons = dict(zip(quarantined["id"], quarantined["reasons"], strict=True))
    changes.loc[held, "to_status"] = Status.QUARANTINED.value
    changes.loc[held, "reason"] = [
        f"gate {hop.suite}: " + ", ".join(reasons[i]) for i in changes.loc[held, "id"]
    ]


def _write_quarantine_rows(
    conn: Connection, hop: Hop, bad: pd.DataFrame, flow_run_id: str | None
) -> None:
    """One quarantine row per held lead: the record as the hop produced it and its reasons."""
    store.bulk_insert(
        conn,
        t.quarantine,
        pd.DataFrame(
            {
                "hop": hop.name,
                "lead_id": bad["id"].to_numpy(),
                "record": _jsonable_rows(bad.drop(columns=["reasons"])),
                "reasons": store.json_column(bad["reasons"]),
                "flow_run_id": flow_run_id,
                "created_at": pd.Timestamp(store.utcnow()),
            }
        ),
    )


def _write_hop_rows(
    conn: Connection, result: HopResult, bad_ids: set[Any], flow_run_id: str | None
) -> None:
    """The hop's own rows (``result.rows``, by table), except those of held leads, stamped
    with the run where the table has a ``flow_run_id``."""
    for name, rows in result.rows.items():
        keep = rows[~rows["lead_id"].isin(bad_ids)] if bad_ids else rows
        if "flow_run_id" in keep.columns:  # pure functions cannot know the run they are in
            keep = keep.assign(flow_run_id=flow_run_id)
        store.bulk_insert(conn, t.metadata.tables[name], keep)


def _fill_outcome(
    outcome: HopOutcome, verdict: quality.GateResult, changes: pd.DataFrame, bad_ids: set[Any]
) -> None:
    """The batch's counts: claimed, quarantined, leads per resulting status and per move."""
    outcome.gate = verdict
    outcome.claimed = len(changes)
    outcome.quarantined = len(bad_ids)
    outcome.statuses = changes["to_status"].value_counts().to_dict()
    changed = changes["to_status"] != changes["from_status"]
    outcome.moved = changes.loc[changed, "to_status"].value_counts().to_dict()


# --------------------------------------------------------------------------- the task


def is_transient(exc: BaseException) -> bool:
    """A dropped connection or a lost race: worth another try. Never a gate's verdict."""
    if isinstance(exc, quality.GateFailed):
        return False
    if isinstance(exc, OperationalError | PendingRollbackError | lifecycle.StaleTransition):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


# --------------------------------------------------------------------------- a whole run


@dataclass
class HopRun:
    """A hop's run, added up: what flows report and turn into a state."""

    hop: str
    batches: int = 0
    claimed: int = 0
    quarantined: int = 0
    taken_over: int = 0
    held: int = 0  # waiting leads another claim still holds when the run ends
    moved: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    gates: list[quality.GateResult] = field(default_factory=list)
    failure: str | None = None

    def notes(self) -> str:
        """What a run's message should add about claims: taken over, still held elsewhere."""
        parts = []
        if self.taken_over:
            parts.append(f"took over {self.taken_over} from a dead run")
        if self.held:
            parts.append(f"{self.held} held by another claim (see `leadflow claims`)")
        return (", " + ", ".join(parts)) if parts else ""

    def add(self, outcome: HopOutcome) -> None:
        self.batches += 1
        self.claimed += outcome.claimed
        self.quarantined += outcome.quarantined
        self.taken_over += outcome.taken_over
        for target, counts in ((self.moved, outcome.moved), (self.statuses, outcome.statuses)):
            for name, value in counts.items():
                target[name] = target.get(name, 0) + int(value)
        for name, value in outcome.stats.items():
            if isinstance(value, bool):
                self.stats[name] = self.stats.get(name, False) or value
            elif isinstance(value, int | float):
                self.stats[name] = self.stats.get(name, 0) + value
        if outcome.gate is not None:
            self.gates.append(outcome.gate)
