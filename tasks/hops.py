"""What every hop after capture does the same way: claim a bounded batch of leads in its
input status, read it as a DataFrame, gate what it produced, and write results, new
statuses, quarantined leads and the gate's verdict in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, select

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.lifecycle import Status
from tasks import quality


def load_claimed(engine: Engine, token: str, columns: Sequence[Any]) -> pd.DataFrame:
    """The leads claimed by ``token`` (columns by name, or SQLAlchemy column expressions)."""
    leads = t.leads
    statement = (
        select(*[leads.c[c] if isinstance(c, str) else c for c in columns])
        .where(leads.c.claimed_by == token)
        .order_by(leads.c.id)
    )
    with engine.connect() as conn:
        return store.read_frame_fast(conn, statement)


def release(engine: Engine, token: str) -> int:
    with engine.begin() as conn:
        return store.release_claims(conn, token)


@contextmanager
def claimed(engine: Engine, token: str) -> Iterator[None]:
    """Give the claim back if processing the batch fails, so the next run can retry it
    without waiting for the lease to expire."""
    try:
        yield
    except BaseException:
        release(engine, token)
        raise


@dataclass
class HopOutcome:
    """What one batch of a hop did (small: this is what tasks return to flows)."""

    hop: str
    claimed: int = 0
    moved: dict[str, int] = field(default_factory=dict)  # to-status -> leads that changed status
    statuses: dict[str, int] = field(default_factory=dict)  # to-status -> all leads of the batch
    quarantined: int = 0
    gate: quality.GateResult | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)


def _jsonable_rows(frame: pd.DataFrame) -> list[str]:
    return [json.dumps(row, default=str, ensure_ascii=False) for row in frame.to_dict("records")]


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


def write_gated(
    conn: Connection,
    split: quality.RowSplit,
    result: quality.GateResult,
    *,
    hop: str,
    suite: str,
    actor: str,
    changes: pd.DataFrame,
    now: datetime,
    flow_run_id: str | None,
    token: str | None = None,
    also: Callable[[Connection, set[Any]], None] | None = None,
) -> HopOutcome:
    """Write a batch that passed its gate, in ``conn``'s transaction.

    ``changes`` is what ``lifecycle.apply`` takes (id, from_status, to_status, fields...).
    Leads failing a row-level expectation move to ``quarantined`` instead, with a
    quarantine row naming what they broke. ``also(conn, quarantined_ids)`` writes whatever
    else belongs in the same transaction. With a claim ``token``, only leads still claimed
    by it are written, and the claim is released.
    """
    bad_ids = set(split.quarantined["id"].tolist())
    changes = changes.copy()
    if token is not None:
        changes["claimed_by"] = None
        changes["claim_expires_at"] = pd.NaT
    if bad_ids:
        held = changes["id"].isin(bad_ids)
        reasons = dict(zip(split.quarantined["id"], split.quarantined["reasons"], strict=True))
        changes.loc[held, "to_status"] = Status.QUARANTINED.value
        if "reason" in changes.columns:
            changes.loc[held, "reason"] = [
                f"gate {suite}: " + ", ".join(reasons[i]) for i in changes.loc[held, "id"]
            ]
    lifecycle.apply(conn, changes, actor=actor, at=now, claimed_by=token, flow_run_id=flow_run_id)
    if bad_ids:
        bad = split.quarantined
        store.bulk_insert(
            conn,
            t.quarantine,
            pd.DataFrame(
                {
                    "hop": hop,
                    "lead_id": bad["id"].to_numpy(),
                    "record": _jsonable_rows(bad.drop(columns=["reasons"])),
                    "reasons": store.json_column(bad["reasons"]),
                    "flow_run_id": flow_run_id,
                    "created_at": pd.Timestamp(store.utcnow()),
                }
            ),
        )
    if also is not None:
        also(conn, bad_ids)
    quality.record(conn, result, flow_run_id=flow_run_id, at=store.utcnow())
    outcome = HopOutcome(hop=hop, claimed=len(changes), gate=result, quarantined=len(bad_ids))
    outcome.statuses = changes["to_status"].value_counts().to_dict()
    changed = changes["to_status"] != changes["from_status"]
    outcome.moved = changes.loc[changed, "to_status"].value_counts().to_dict()
    return outcome


def record_failure(
    engine: Engine, result: quality.GateResult, *, flow_run_id: str | None, token: str | None = None
) -> None:
    """Keep a failed gate's verdict (and give the claim back) after the batch rolled back."""
    with engine.begin() as conn:
        quality.record(conn, result, flow_run_id=flow_run_id, at=store.utcnow())
        if token is not None:
            store.release_claims(conn, token)


def gate_and_write(
    engine: Engine,
    *,
    hop: str,
    suite: str,
    actor: str,
    token: str,
    produced: pd.DataFrame,
    changes: pd.DataFrame,
    now: datetime,
    flow_run_id: str | None,
    max_quarantine_rate: float | None = None,
    batch_ref: str,
    also: Callable[[Connection, set[Any]], None] | None = None,
) -> HopOutcome:
    """Gate a claimed batch and write it in one transaction; a batch-level failure writes
    nothing but the verdict, releases the claim and raises ``quality.GateFailed``."""
    split, result = gate(
        suite, produced, batch_ref=batch_ref, max_quarantine_rate=max_quarantine_rate
    )
    if not result.success:
        record_failure(engine, result, flow_run_id=flow_run_id, token=token)
        raise quality.GateFailed(result)
    with engine.begin() as conn:
        return write_gated(
            conn,
            split,
            result,
            hop=hop,
            suite=suite,
            actor=actor,
            changes=changes,
            now=now,
            flow_run_id=flow_run_id,
            token=token,
            also=also,
        )
